"""How messages of the command line and the panels word counts."""

from __future__ import annotations


def counted(n: int, singular: str, plural: str | None = None) -> str:
    """``"1 nucleus"``, ``"2,048 nuclei"``: a count and its noun, singular or plural."""
    return f"{n:,} {singular if n == 1 else plural or singular + 's'}"
