"""The deploy stage: an OpenAI-compatible HTTP server over trained runs."""
