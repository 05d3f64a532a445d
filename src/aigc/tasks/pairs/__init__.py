"""Source/target pairs for the encoder-decoder: the ``pairs`` kind of run (translation)."""
