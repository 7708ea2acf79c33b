"""The documentation a user reads on GitHub: README.md is a front page that links into docs/, and every relative
link there (a file, or a file and a heading's anchor) resolves, as GitHub renders it."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
FRONT_SCREEN = 60  # lines of README.md a user sees before scrolling
QUICK_START = ["pip install -e . && python -m bench run --methods mclstexp,st-net",
               'pip install -e ".[test]" && python -m pytest']

FENCED = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The Markdown outside code blocks: a `#` comment in a code block is not a heading, nor `[a](b)` a link."""
    return FENCED.sub("", text)


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens, a repeated
    heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of ``page`` whose file, or heading anchor, does not exist."""
    broken = []
    for target in LINK.findall(INLINE_CODE.sub("", prose(page.read_text()))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked offline
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading '#{anchor}' in {resolved.name})")
    return broken


def test_every_relative_link_in_the_readme_and_docs_resolves():
    assert len(PAGES) > 2, PAGES
    broken = {page.relative_to(REPO).as_posix(): broken_links(page) for page in PAGES}
    assert not any(broken.values()), {page: links for page, links in broken.items() if links}


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Real `code` heading: yes\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#real-code-heading-yes) [gone](missing.md) [bad](other.md#not-a-heading) "
                    "[web](https://example.org/x) `[code](nowhere.md)` [self](#page)\n# Page\n")
    assert broken_links(page) == ["missing.md (no file " + str(tmp_path / "missing.md") + ")",
                                  "other.md#not-a-heading (no heading '#not-a-heading' in other.md)"]


def test_the_docs_index_links_every_page():
    index = (DOCS / "README.md").read_text()
    unlinked = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and f"]({p.name}" not in index]
    assert not unlinked, f"docs/README.md does not link {unlinked}"


def test_the_readme_first_screen_holds_the_quick_start_and_the_way_to_the_docs():
    first_screen = "\n".join(REPO.joinpath("README.md").read_text().splitlines()[:FRONT_SCREEN])
    for command in QUICK_START:
        assert f"```bash\n{command}\n```" in first_screen, command
    assert "](docs/README.md)" in first_screen
