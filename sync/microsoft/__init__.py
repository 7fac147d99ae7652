"""Microsoft 365 / Outlook.com: MSAL tokens (client), Graph requests (graph) and the V3 engine."""
