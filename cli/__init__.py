"""gnomon's typer command line: a thin layer over :class:`gnomon.core.engine.Engine`."""
