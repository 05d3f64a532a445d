"""Preference tuning (DPO, ORPO) on pairs of answers to one prompt: the better one chosen, the other rejected."""
