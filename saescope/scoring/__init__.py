"""Scoring feature names against held-out examples, with shuffled controls."""
