"""How a foreign error enters ours: a first line of exactly the limit stays whole."""

from __future__ import annotations

from edgenode.errors import first_line


def test_a_first_line_of_exactly_the_limit_is_kept_whole():
    """Only a line longer than ``limit`` loses its middle; one of exactly ``limit`` characters is kept as is."""
    exact = "a" * 100 + "b" * 100
    assert first_line(RuntimeError(exact)) == exact
    longer = first_line(RuntimeError(exact + "c"))
    assert len(longer) == 200 and "…" in longer and longer.endswith("c")
