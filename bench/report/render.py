"""Render the report's sections into one HTML page with the Jinja2 template in the suite's ``reports/`` folder
(bench.paths: the checkout's, or the installed package's copy).

Autoescaping is on for every template, so every value the template prints is escaped wherever it comes
from (gene, section and method names, configuration values): the section builders pass plain text.
``StrictUndefined`` turns a template that names a field the data does not have into an error instead of
an empty string. The template is found from the package, not the working directory.
"""
from __future__ import annotations

import errno
from collections.abc import Sequence

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from bench.paths import REPORTS_DIR
from bench.report.blocks import Section, check_blocks

TEMPLATE_DIR = REPORTS_DIR
PAGE_TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"
TEMPLATE_FILES = (PAGE_TEMPLATE, "blocks.html.j2", STYLESHEET)  # the page imports the blocks, includes the CSS


def environment() -> Environment:
    for name in TEMPLATE_FILES:
        if not (TEMPLATE_DIR / name).is_file():
            raise FileNotFoundError(errno.ENOENT, "the report's page template or stylesheet is missing (the "
                                    "report needs the reports/ folder of the stbench source tree or package)",
                                    str(TEMPLATE_DIR / name))
    # trim_blocks/lstrip_blocks: a line holding only a {% tag %} leaves no blank line in the page.
    return Environment(loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_page(title: str, subtitle: str, sections: Sequence[Section], footer: str) -> str:
    """The whole page: header, a navigation bar with one link per section, the sections, a footer."""
    for s in sections:
        check_blocks(s.blocks, f"report section {s.id!r}")
    return environment().get_template(PAGE_TEMPLATE).render(title=title, subtitle=subtitle, sections=list(sections),
                                                             footer=footer)
