"""Builtin part: defense_tasks (to be filled in)."""
