"""The benchmark scripts' tables in Markdown files: each between a pair of named markers."""

from __future__ import annotations

from pathlib import Path


def markers(section: str) -> tuple[str, str]:
    """``<!-- section -->`` and ``<!-- /section -->``."""
    return f"<!-- {section} -->", f"<!-- /{section} -->"


def write_section(path: Path, body: str, section: str, heading: str | None = None) -> None:
    """Put ``body`` between the markers of ``section`` in ``path``, keeping the rest of the
    file; where the markers are missing they are added at its end (under ``## heading`` if
    given), and a missing file starts as ``# Benchmarks``."""
    start, end = markers(section)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start not in text:
        text = text.rstrip("\n") + "\n\n" + (f"## {heading}\n\n" if heading else "") + f"{start}\n{end}\n"
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{body}\n{end}{tail}")
