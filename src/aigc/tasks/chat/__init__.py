"""Conversations for fine-tuning a GPT on its assistant turns: the ``chat`` kind of run."""
