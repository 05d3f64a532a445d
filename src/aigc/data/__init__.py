"""Data stages: collect raw records, clean them, tokenize and shard them for training."""
