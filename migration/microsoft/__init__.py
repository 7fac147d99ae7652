"""Microsoft 365 and Outlook.com: MSAL sign-in, admin consent, Microsoft Graph.

client.py   MSAL (auth code + PKCE, silent refresh, admin-consent proof)
graph.py    Microsoft Graph requests (/me, mail folders, messages, delta)
flow.py     the sign-in use cases and the worker's verifying step
consent.py  admin consent per tenant: links, callback, resume
views.py, urls.py, tasks.py
"""
