"""Generation: sampling rules, the decoding engine over token ids, and text streaming on top of it."""
