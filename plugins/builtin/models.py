"""Builtin part: models (to be filled in)."""
