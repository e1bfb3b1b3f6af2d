"""Rewrite one generated section of docs/benchmarks.md, between its two markers."""

from pathlib import Path


def replace_section(path: Path, name: str, block: str, heading: str) -> None:
    """Put `block` between `<!-- NAME START -->` and `<!-- NAME END -->` in `path`; a missing
    section is appended under `## heading`."""
    start, end = f"<!-- {name} START -->", f"<!-- {name} END -->"
    text = path.read_text()
    if start not in text:
        text += f"\n## {heading}\n\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{block}\n{end}{tail}")
