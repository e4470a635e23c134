"""The llm-gateway collector: every usage event into NDJSON or the Postgres ledger, once."""
