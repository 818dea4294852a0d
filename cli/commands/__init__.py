"""The core CLI commands, one module per group."""
