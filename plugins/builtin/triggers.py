"""Builtin part: triggers (to be filled in)."""
