"""The one training loop for every model kind, and its distributed (torchrun) helpers."""
