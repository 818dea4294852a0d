"""Builtin part: attack_tasks (to be filled in)."""
