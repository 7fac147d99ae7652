"""Exchange on-premises over EWS: the client (sync.exchange.client) and the V3 engine."""
