"""The README and docs/ pages: every relative link resolves (file and, for Markdown targets, heading), and
the README starts with the two commands a newcomer runs."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)

# the README's first two commands: install + main job, and the tests (what CI runs)
MAIN_JOB = "pip install torch==2.13.0 && pip install . && mtd compress --data ../shared/data/cifar10-jpeg.tar.gz"
TESTS = "pip install torch==2.13.0 -r requirements-dev.txt && pip install . && bash tools/run_tests.sh"


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]  # relative ones only


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert page.is_file(), page
    broken = []
    for target in links(page):
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def test_the_checker_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n[ok](p.md#top) [gone](missing.md) `[not](a link)`\n```\n[x](nowhere.md)\n```\n")
    assert links(page) == ["p.md#top", "missing.md"]
    assert anchors(page) == {"top"}


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = FENCE.search(text).group(0)
    assert MAIN_JOB in first_block and TESTS in first_block
    assert first_block.index(MAIN_JOB) < first_block.index(TESTS)
    assert len(text.splitlines()) <= 200
