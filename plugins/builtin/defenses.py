"""Builtin part: defenses (to be filled in)."""
