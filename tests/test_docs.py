"""The user documentation (README.md and docs/*.md): links that resolve, a short front page, no issue numbers.

Plain text checks, no Ray, no MLflow, no torch: they run in well under a second. Each check is also run on a
small document with the defect it is meant to catch, so a check that silently stopped looking would fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_MAX_BYTES = 15_000
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.DOTALL)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
#: ``[text](target)`` and ``![alt](target)``; the text may hold one level of brackets (``[`a[0]`](x)``).
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+[\"'(][^)]*)?\s*\)")
#: ``[label]: target`` (a reference-style link's definition).
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
ISSUE_NUMBER = re.compile(r"\bissues? \d+", re.IGNORECASE)
EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> str:
    """``text`` without fenced code blocks, inline code and HTML comments: what a reader sees as Markdown
    (a ``[x](y)`` inside code is code, not a link)."""
    return INLINE_CODE.sub("", FENCE.sub("", HTML_COMMENT.sub("", text)))


def link_targets(text: str) -> list[str]:
    """Every link and image target of a Markdown text, as written (anchors and external URLs included)."""
    body = prose(text)
    return [m.group(1).strip("<>") for pattern in (INLINE_LINK, REFERENCE_DEF) for m in pattern.finditer(body)]


def broken_links(doc: Path) -> list[str]:
    """The relative link and image targets of ``doc`` that name no existing file or folder, resolved against
    ``doc``'s folder. ``#anchor`` parts are ignored (a pure ``#anchor`` points into ``doc`` itself), and so are
    external URLs."""
    broken = []
    for target in link_targets(doc.read_text(encoding="utf-8")):
        if target.lower().startswith(EXTERNAL):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path and not (doc.parent / path).exists():
            broken.append(target)
    return broken


def issue_numbers(text: str) -> list[str]:
    """Every "issue 14" / "issues 12" phrase in ``text``, code and comments included."""
    return ISSUE_NUMBER.findall(text)


def test_the_documentation_is_found() -> None:
    """The other checks loop over these files: an empty list (docs/ moved, a glob gone wrong) would make them
    pass while checking nothing."""
    names = {p.relative_to(ROOT).as_posix() for p in DOCS}
    assert "README.md" in names
    assert len(names) > 1, "no docs/*.md page found"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves(doc: Path) -> None:
    """Catches a link or image whose file was moved, renamed or never written (``[x](docs/gone.md)``,
    ``![fig](missing.png)``), which GitHub renders as a 404 or a broken image."""
    assert broken_links(doc) == [], f"{doc.relative_to(ROOT)}: links to files that do not exist"


def test_readme_is_a_front_page_under_15_kb() -> None:
    """Catches the README growing back into a reference manual: the reference belongs in docs/."""
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move reference material to docs/"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_issue_numbers_in_user_documentation(doc: Path) -> None:
    """Catches tracker references such as "(issue 14)" or "issue 12's acceptance": they mean nothing to a
    reader of the documentation; say what the thing is instead."""
    assert issue_numbers(doc.read_text(encoding="utf-8")) == []


# -- the checks catch what they are meant to catch ------------------------------------------------------------

def test_broken_links_are_found_and_good_ones_pass(tmp_path: Path) -> None:
    """The link check on a page with every kind of target: it must flag exactly the missing files."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n")
    (tmp_path / "fig.png").write_bytes(b"")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](docs/page.md) [ok with anchor](docs/page.md#page) [anchor only](#top) ![ok image](fig.png)\n"
        "[web](https://example.com/x.md) [mail](mailto:a@b.c) [titled](docs/page.md \"Title\")\n"
        "[gone](docs/gone.md#part) and ![missing image](docs/missing.png)\n"
        "[ref]: docs/also-gone.md\n"
        "`[in code](nowhere.md)`\n"
        "```\n[in a fence](nowhere-either.md)\n```\n"
        "<!-- [in a comment](not-a-link.md) -->\n"
    )
    assert broken_links(doc) == ["docs/gone.md#part", "docs/missing.png", "docs/also-gone.md"]


def test_issue_numbers_are_found_in_any_form() -> None:
    """The issue check on the phrasings the old README used, and on words that merely look alike."""
    text = "(issue 14) and Issue 12's acceptance; issues 16 and 17. Not: tissue 3, issue-free, the issue's target."
    assert issue_numbers(text) == ["issue 14", "Issue 12", "issues 16"]


def test_the_size_check_counts_bytes_not_characters() -> None:
    """The limit is in bytes (what ``wc -c`` says): the README's "±" and "→" take two or three bytes each."""
    assert len("± →".encode()) == 6 and len("± →") == 3
    assert len(README.read_bytes()) >= len(README.read_text(encoding="utf-8"))
