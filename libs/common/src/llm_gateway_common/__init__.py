"""What the llm-gateway services share: the usage event, config loading, logging, stream helpers."""
