"""Printing for people (rich) and for scripts (JSON)."""

from __future__ import annotations

import json
import sys
from typing import Any


def console(stderr: bool = False):
    """A rich console on stdout (or stderr) that never prints a credential."""
    from rich.console import Console

    from gnomon.core.redact import RedactingStream

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=RedactingStream(stream), stderr=stderr, highlight=False, soft_wrap=False)


def print_json(obj: Any) -> None:
    from gnomon.core.redact import redact

    sys.stdout.write(redact(json.dumps(obj, indent=2, sort_keys=False, default=str)) + "\n")


def error(message: str) -> None:
    from rich.markup import escape

    from gnomon.core.redact import redact

    console(stderr=True).print(f"[bold red]error:[/bold red] {escape(redact(message))}", soft_wrap=True)


def table(title: str | None, columns: list[str], rows: list[list[Any]]):
    from rich.table import Table

    t = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        t.add_column(column, overflow="fold")
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    return t
