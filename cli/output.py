"""Printing for people (rich) and for scripts (JSON)."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable


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


def field(out, label: str, value: Any) -> None:
    """One ``label: value`` line; a long value (a path, a URI) is never broken by an inserted newline."""
    from rich.markup import escape

    out.print(f"[dim]{escape(label)}:[/dim] {escape(str(value))}", soft_wrap=True)


def tracking_lines(out, engine) -> None:
    """Where the runs went: the tracking URI and the experiment, one per line."""
    from gnomon.core.tracking import describe_uri  # never print a credential

    field(out, "tracking", describe_uri(engine.tracking_uri))
    field(out, "experiment", engine.experiment)


def table(title: str | None, columns: list[str], rows: list[list[Any]], *, wrap: Iterable[str] = ()):
    """A table for the terminal that never splits a name across lines.

    Cells are rich markup. Columns named in ``wrap`` hold prose (summaries, help) and wrap at
    spaces; every other column holds identifiers (task, parameter and plugin names, defaults,
    run ids) and is never wrapped, folded or truncated. When the terminal (80 columns when
    output is piped) is too narrow for that, the layout changes instead: prose goes on
    indented lines under each row, and if even the names do not fit side by side, each row
    becomes a small block of ``column: value`` lines.
    """
    return FitTable(title, list(columns), rows, set(wrap))


class FitTable:
    """The renderable behind :func:`table`; it picks its layout for the width it is drawn at."""

    #: Characters a rich table with the default box and padding adds: 3 per column, 1 for the edge.
    _PER_COLUMN, _EDGE = 3, 1
    _INDENT = 4

    def __init__(self, title: str | None, columns: list[str], rows: list[list[Any]], wrap: set[str]):
        from rich.text import Text

        def text(value: Any) -> Text:
            if isinstance(value, Text):
                return value
            return Text.from_markup("" if value is None else str(value))

        self.title = title
        self.columns = columns
        self.rows = [[text(v) for v in row] for row in rows]
        self.wrap = [c in wrap for c in columns]

    # -- measuring ------------------------------------------------------------
    @staticmethod
    def _longest_line(text) -> int:
        from rich.cells import cell_len

        return max((cell_len(line) for line in text.plain.splitlines()), default=0)

    @staticmethod
    def _longest_word(text) -> int:
        from rich.cells import cell_len

        return max((cell_len(word) for word in text.plain.split()), default=0)

    def _widths(self) -> tuple[list[int], list[int]]:
        """Per column: the narrowest width that splits no word or name, and the natural width."""
        from rich.text import Text

        mins, maxs = [], []
        for i, name in enumerate(self.columns):
            header = Text(name)
            cells = [row[i] for row in self.rows if i < len(row)]
            natural = max([self._longest_line(header)] + [self._longest_line(c) for c in cells])
            if self.wrap[i]:
                least = max([self._longest_word(header)] + [self._longest_word(c) for c in cells])
            else:  # a name column's header does not wrap either
                least = natural
            mins.append(max(1, least))
            maxs.append(max(1, natural, least))
        return mins, maxs

    def _overhead(self, n: int) -> int:
        return self._PER_COLUMN * n + self._EDGE

    # -- rendering ------------------------------------------------------------
    def __rich_console__(self, console, options):
        width = options.max_width
        mins, maxs = self._widths()
        if self.title:
            yield self._title()
        if sum(maxs) + self._overhead(len(maxs)) <= width:
            yield self._boxed(maxs)
        elif sum(mins) + self._overhead(len(mins)) <= width:
            yield self._boxed(self._share(mins, maxs, width - self._overhead(len(mins))))
        elif any(self.wrap) and self._names_fit(maxs, width):
            yield from self._names_then_prose(console, options, maxs)
        else:
            yield from self._blocks(console, options)

    def _title(self):
        from rich.text import Text

        return Text(self.title, style="bold")

    def _share(self, mins: list[int], maxs: list[int], room: int) -> list[int]:
        """Give prose columns the room left after every column got its minimum, by how much they want."""
        widths = list(mins)
        spare = room - sum(mins)
        wants = [(maxs[i] - mins[i]) if self.wrap[i] else 0 for i in range(len(mins))]
        total = sum(wants)
        if total and spare > 0:
            for i, want in enumerate(wants):
                widths[i] += min(want, spare * want // total)
            # hand out what integer division left over, widest wish first
            left = room - sum(widths)
            for i in sorted(range(len(widths)), key=lambda j: -wants[j]):
                if left <= 0:
                    break
                extra = min(left, maxs[i] - widths[i]) if self.wrap[i] else 0
                widths[i] += extra
                left -= extra
        return widths

    def _boxed(self, widths: list[int]):
        from rich.table import Table

        t = Table(show_lines=False, header_style="bold")
        for i, name in enumerate(self.columns):
            if self.wrap[i]:
                t.add_column(name, width=widths[i], overflow="fold")
            else:
                t.add_column(name, width=widths[i], no_wrap=True, overflow="ignore")
        for row in self.rows:
            t.add_row(*row)
        return t

    def _names_fit(self, maxs: list[int], width: int) -> bool:
        names = [m for m, w in zip(maxs, self.wrap, strict=True) if not w]
        return sum(names) + 2 * max(0, len(names) - 1) <= width

    def _indented(self, console, options, text):
        """``text`` wrapped at spaces to the width left after the indent, each line indented."""
        from rich.segment import Segment

        inner = options.update(width=max(1, options.max_width - self._INDENT))
        for line in console.render_lines(text, inner, pad=False):
            yield Segment(" " * self._INDENT)
            yield from line
            yield Segment.line()

    def _names_then_prose(self, console, options, maxs: list[int]):
        """Identifier columns side by side; each prose cell on an indented line below its row."""
        from rich.text import Text

        idents = [i for i, w in enumerate(self.wrap) if not w]
        prose = [i for i, w in enumerate(self.wrap) if w]

        def line(cells: list, style: str = "") -> Text:
            out = Text(style=style)
            for n, i in enumerate(idents):
                cell = cells[n]
                out.append_text(cell)
                if n < len(idents) - 1:
                    out.append(" " * (maxs[i] - cell.cell_len + 2))
            return out

        yield line([Text(self.columns[i]) for i in idents], style="bold")
        for row in self.rows:
            yield line([row[i] if i < len(row) else Text("") for i in idents])
            for i in prose:
                cell = row[i] if i < len(row) else Text("")
                if not cell.plain.strip():
                    continue
                label = Text(f"{self.columns[i]}: ", style="dim") if len(prose) > 1 else Text("")
                yield from self._indented(console, options, label + cell)

    def _blocks(self, console, options):
        """One block per row: the first cell, then ``column: value`` lines (for very narrow terminals)."""
        from rich.text import Text

        for row in self.rows:
            first = row[0] if row else Text("")
            head = first.copy()
            head.stylize("bold")
            yield head
            for name, cell in zip(self.columns[1:], row[1:], strict=False):
                if cell.plain.strip():
                    yield from self._indented(console, options, Text(f"{name}: ", style="dim") + cell)
