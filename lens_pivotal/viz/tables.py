"""Fixed-width text tables for terminals and notebooks (the demo, the CLIs, ``DecodingResult.table``)."""

from __future__ import annotations

from typing import Sequence


def format_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    align: str | None = None,
    notes: Sequence[str] | None = None,
    above: Sequence[str] = (),
) -> str:
    """Columns as wide as their widest cell, two spaces apart, a rule under the header.

    Args:
        header: one title per column.
        rows: the cells, already formatted as strings.
        align: one ``"l"`` or ``"r"`` per column (default: every column right-aligned).
        notes: text after each row (``"<- best"``), or ``""``.
        above: lines printed before the header (a legend).
    """
    align = align or "r" * len(header)
    if len(align) != len(header) or any(len(row) != len(header) for row in rows):
        raise ValueError(f"every row and align must have {len(header)} columns, one per header entry")
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) if a == "l" else cell.rjust(w) for cell, w, a in zip(cells, widths, align))

    top = line(header).rstrip()
    body = [(line(row) + (f"  {note}" if note else "")).rstrip() for row, note in zip(rows, notes or [""] * len(rows))]
    return "\n".join([*above, *([""] if above else []), top, "-" * len(top), *body])
