"""README stays a front door and every link in it and in docs/ leads somewhere that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if heading := re.match(r"^#{1,6} (.+)$", line):
            text = re.sub(r"[`*_]", "", heading.group(1).strip().lower())
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^(https?:|mailto:)", target):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no file {destination}")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading #{anchor} in {destination.name}")
    assert not broken, "\n".join(broken)


def test_readme_stays_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300
    text = "\n".join(lines)
    for must in (
        "## Run it",
        "## Test it",
        "## Connect a client",
        "## Security model",
        "pip install -e '.[test]' && pytest",
    ):
        assert must in text, must


def test_the_tools_reference_is_generated_from_the_tools_themselves():
    from scripts.gen_tools_doc import render

    committed = (ROOT / "docs" / "tools.md").read_text(encoding="utf-8")
    assert committed == render(), "docs/tools.md is stale: run python scripts/gen_tools_doc.py > docs/tools.md"
