"""Benchmarks write their results into docs: replace the block between `<!-- NAME:start -->` and `<!-- NAME:end -->`."""
from __future__ import annotations

import re
from pathlib import Path


def replace_block(doc_path: Path, name: str, text: str) -> None:
    """Put text between the page's NAME markers (appended at the end, with the markers, if it has none)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = doc_path.read_text(encoding="utf-8") if doc_path.exists() else ""
    if start not in doc:
        doc += f"\n{start}\n{end}\n"
    block = f"{start}\n{text}\n{end}"
    doc_path.write_text(re.sub(re.escape(start) + ".*" + re.escape(end), lambda _: block, doc, flags=re.S),
                        encoding="utf-8")
