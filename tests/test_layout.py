"""The README's layout section names every module of every package, so a reader's map matches the tree."""

from __future__ import annotations

import re
from pathlib import Path

import llava_interleave

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(llava_interleave.__file__).parent


def _layout_section() -> dict[str, str]:
    """The text of each `name/` paragraph of the README's layout block."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout of the code", 1)[1].split("```", 2)[1]
    paragraphs: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"^  (\w+)/\s", line)
        if match:
            current = match.group(1)
            paragraphs[current] = line
        elif re.match(r"^  \S", line) or not line.startswith("  "):
            current = None
        elif current is not None:
            paragraphs[current] += " " + line
    return paragraphs


def test_readme_layout_names_every_module():
    paragraphs = _layout_section()
    missing = []
    for package in ("model", "data", "train", "eval", "serve", "cli"):
        words = set(re.findall(r"\w+", paragraphs.get(package, "")))
        for module in sorted((PACKAGE / package).glob("*.py")):
            if module.stem not in ("__init__", "__main__") and module.stem not in words:
                missing.append(f"{package}/{module.name}")
    assert not missing, f"README layout does not mention: {missing}"
