"""Builtin part: training_tasks (to be filled in)."""
