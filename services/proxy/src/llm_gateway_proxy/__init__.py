"""The llm-gateway proxy: an OpenAI-compatible HTTP proxy that meters every request."""
