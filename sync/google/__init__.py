"""Google (Gmail, Google Workspace): OAuth tokens for the V3 sync. See oauth.py."""
