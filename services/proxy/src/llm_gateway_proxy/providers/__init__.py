"""Provider translations: pure functions between OpenAI's wire format and each provider's."""
