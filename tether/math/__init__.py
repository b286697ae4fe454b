"""The math of training: every formula, torch only (see losses.py)."""
