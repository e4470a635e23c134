"""Fakes of what llm-gateway cannot reach in tests, speaking the real wire formats."""
