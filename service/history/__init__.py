"""Prediction history: every computed prediction, with its realised outcome once known."""
