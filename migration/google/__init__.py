"""Google sign-in for the migration (OAuth 2.0 authorization code with PKCE). See flow.py."""
