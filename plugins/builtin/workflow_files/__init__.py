"""Builtin workflow files (TOML)."""
