"""The llm-gateway dispatcher: every usage event to a JSONL file, Lunary or Helicone, once."""
