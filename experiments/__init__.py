"""Experiments: one script per question, run as `python -m experiments.<name>` (README.md)."""
