"""Documents for a GPT: the ``text`` kind of run (plain text, JSONL, CSV; code)."""
