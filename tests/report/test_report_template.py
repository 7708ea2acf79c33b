"""The report's page template (reports/report.html.j2): every kind of block escapes what it prints, the CSS
is inlined verbatim, and neither the template nor the CSS refers to the network."""
import base64
import io
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from bench.cli import describe_error
from bench.report import render
from bench.report.blocks import Cards, Definitions, Details, Figure, Heading, Paragraph, Section, Table, Verdict
from bench.report.render import STYLESHEET, TEMPLATE_DIR, render_page

EVIL = '<script>alert("x")</script> & \'q\''  # a name that would run, or break out of an attribute


class Tree(HTMLParser):
    """Start tags with their attributes, text, and the raw text of <style>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text, self.style, self._in_style = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        (self.style if self._in_style else self.text).append(data)


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _every_kind(tag: str) -> list[Section]:
    """One section holding every kind of block, each text field a distinct copy of EVIL."""
    def t(name: str) -> str:
        return f"{name}:{tag}"

    blocks = [Paragraph(t("paragraph"), cls=t("pclass")), Heading(t("heading")),
              Table(t("tid"), [t("th")], [[t("cell")], [(t("main"), t("second"))]], caption=t("caption"),
                    row_classes=[t("rowclass"), ""]),
              Figure(_png(), t("alt"), t("figcaption")), Definitions([(t("dt"), t("dd"))]),
              Cards([(t("cardlabel"), t("cardvalue"))]), Verdict([t("verdict")], strong=False),
              Details(t("summary"), [Paragraph(t("inner"))])]
    return [Section(t("sid"), t("nav"), t("title"), blocks, t("intro"))]


def test_every_block_kind_escapes_its_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the template is found from the project, not the working directory
    page = render_page(f"page:{EVIL}", f"sub:{EVIL}", _every_kind(EVIL), f"foot:{EVIL}")
    assert "<script" not in page.lower()
    tree = Tree()
    tree.feed(page)
    tree.close()
    assert not any(tag == "script" for tag, _ in tree.tags)
    text = "".join(tree.text)
    for field in ("page", "sub", "foot", "title", "nav", "intro", "paragraph", "heading", "th", "cell", "main",
                  "second", "caption", "figcaption", "dt", "dd", "cardlabel", "cardvalue", "verdict", "summary",
                  "inner"):
        assert f"{field}:{EVIL}" in text, field  # shown as the text it is
    values = {v for _, attrs in tree.tags for v in attrs.values()}
    for field in ("sid", "tid", "pclass", "alt"):
        assert f"{field}:{EVIL}" in values, field  # attributes keep their whole value: no break-out
    assert f"rowclass:{EVIL}" in values and f"#nav:{EVIL}" not in values and f"#sid:{EVIL}" in values


def test_the_css_is_inlined_verbatim_and_nothing_refers_to_the_network():
    css = (TEMPLATE_DIR / STYLESHEET).read_text(encoding="utf-8")
    page = render_page("t", "s", _every_kind("plain"), "f")
    tree = Tree()
    tree.feed(page)
    tree.close()
    assert "".join(tree.style).strip() == css.strip()
    images = [attrs["src"] for tag, attrs in tree.tags if tag == "img"]
    assert images == [f"data:image/png;base64,{_png()}"]
    for source in [page, *(p.read_text(encoding="utf-8") for p in TEMPLATE_DIR.iterdir() if p.is_file()
                           and p.suffix in (".j2", ".css"))]:
        assert not re.search(r"(https?:)?//", source, re.I)
        assert "@import" not in source and not re.search(r"url\(", source)


def test_a_block_of_unknown_kind_and_a_missing_template_are_errors(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="'x': a str is not a report block"):
        render_page("t", "s", [Section("x", "x", "x", ["<p>raw html</p>"])], "f")
    monkeypatch.setattr(render, "TEMPLATE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        render_page("t", "s", _every_kind("plain"), "f")
    message, code = describe_error(err.value)  # what `bench report` prints, and its exit code
    assert code == 2 and message.startswith(f"{tmp_path / 'report.html.j2'}: the report's page template")
