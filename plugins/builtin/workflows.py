"""Builtin part: workflows (to be filled in)."""
