"""Builtin part: commands (to be filled in)."""
