"""IMAP: the client (sync.imap.client), folder discovery and the V3 engine."""
