"""Speech from text: audio as codebook tokens for the caption-prefix GPT (the ``speech`` kind of run)."""
