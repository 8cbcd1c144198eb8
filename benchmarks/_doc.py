"""Write a '## title' section of a markdown file in docs/ (shared by the benchmark scripts)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_section(doc_name: str, title: str, body: str, intro: str = "") -> Path:
    """Replace (or append) the section ``## title`` of ``docs/<doc_name>``."""
    doc = ROOT / "docs" / doc_name
    text = doc.read_text() if doc.exists() else intro
    marker = f"## {title}\n"
    if marker in text:
        head, _, rest = text.partition(marker)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        text = head + marker + "\n" + body.strip() + "\n\n" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + marker + "\n" + body.strip() + "\n"
    doc.write_text(text.lstrip("\n"))
    return doc
