"""The built documentation site: it works offline.

The site is built once per test session (per xdist worker group, behind a file lock) with the
README's command, ``sphinx-build -W --keep-going -b html docs OUT``, into a temporary folder, so
these tests check the pages a reader gets, and a warning fails the build. The build takes about
10 s on 2 cores.
"""

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# Builds the whole site (about 15 s): in the slow suite, `pytest -m slow`, beside CI's docs build.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built site's folder, shared by the xdist workers of one run."""
    # Under xdist every worker has its own base temp folder inside a common parent.
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "site"
    with open(shared / "site.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "index.html").exists():
            # The checkout's jdrop, whatever is installed.
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", str(out)]
            result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def pages(site: Path) -> list[Path]:
    """Every page of the site (not the theme's templates in _static/)."""
    found = sorted(page for page in site.rglob("*.html") if "_static" not in page.relative_to(site).parts)
    assert len(found) > 10
    return found


def articles(site: Path) -> "dict[str, Element]":
    """Each page's article, where its content is, by page: the guides, the API pages and the indexes.

    Not the search page, which has no article, nor the [source] links' listings of jdrop's files
    (_modules/), which show the source as it is, 120 columns wide, and scroll sideways.
    """
    found = {}
    for page in pages(site):
        name = str(page.relative_to(site))
        if name == "search.html" or name.startswith("_modules/"):
            continue
        (found[name],) = [
            element for element in parse(page.read_text()).iter("article") if "bd-article" in element.classes
        ]
    assert {"index.html", "family.html", "api/jdrop.html"} <= set(found)
    return found


# A tag that loads a script, a stylesheet or a font from elsewhere: <script src="http...">,
# <link href="http..."> (any rel), and CSS @import or url() of an absolute URL.
REMOTE = re.compile(
    r"""<script\b[^>]*\bsrc=["']?(?:https?:)?//|<link\b[^>]*\bhref=["']?(?:https?:)?//"""
    r"""|@import\s+(?:url\()?["']?(?:https?:)?//""",
    flags=re.IGNORECASE,
)


def test_pages_load_nothing_from_the_network(site):
    remote = {
        str(page.relative_to(site)): REMOTE.findall(page.read_text())
        for page in pages(site)
        if REMOTE.search(page.read_text())
    }
    assert not remote, remote


def test_math_renderer_ships_with_the_site(site):
    # The pages with formulas load MathJax from the site itself, and it is there.
    page = (site / "family.html").read_text()
    (src,) = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page)
    assert not src.startswith(("http:", "https:", "//")), src
    assert (site / src).is_file()
    # MathJax's CommonHTML output loads its fonts relative to the script.
    assert list((site / src).parent.glob("output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff"))
    assert r"\(" in page  # a formula MathJax renders


def test_copy_button_leaves_out_prompts(site):
    # sphinx-copybutton copies a block with >>> or ... prompts as its prompt lines without the
    # prompts (so the API's examples paste and run), and a block without prompts whole.
    script = (site / "_static" / "copybutton.js").read_text()
    assert "formatCopyText(text, '>>> |\\\\.\\\\.\\\\. ', true, true, true" in script
    assert "copybutton.js" in (site / "api" / "jdrop.html").read_text()


def test_api_entries_link_to_their_source(site):
    page = (site / "api" / "jdrop.html").read_text()
    assert 'href="../_modules/jdrop/_dropout.html#dropout"' in page
    assert (site / "_modules" / "jdrop" / "_dropout.html").is_file()


# --- Nothing overflows its box ---------------------------------------------------------------
#
# A static rule on the built HTML, checked against Chromium's layout of every code block and
# table of the site (window 1440 px wide, the rule's numbers below measured there): no element
# that the rule accepts overflowed. The theme is sphinx-book-theme
# (pydata-sphinx-theme underneath), with docs/_static/jdrop.css:
#
# - From a 1440 px window up the page has its full width, 88rem = 1408 px: the primary sidebar
#   takes 20%, the page's table of contents 17rem = 272 px, and the article the remaining 854 px,
#   with 2rem of padding each side: its content box, where code blocks and tables sit, is 790 px.
# - A code block (<pre>) has 1rem of padding each side, so its text has 758 px; an API entry's
#   body (<dd>) is indented by 2rem, so a block in it has 726 px. Its font is 0.875 of 16 px, 14 px,
#   in the theme's monospace stack; the widest of those fonts, DejaVu Sans Mono (Chromium's
#   monospace on Linux) and Menlo, advance 0.602 em, 8.43 px a character: 89 characters fit in
#   758 px and 86 in 726 px. A line of more scrolls the block sideways and hides its end.
# - The rule asks for at most 80 characters a line (and at most what fits where a block is
#   indented), which leaves room in narrower windows too, where the box shrinks with the window:
#   a block fits down to a 1315 px window, one in an API entry down to 1360 px, and both in a
#   1000-1199 px one (no table of contents column); below, a long line scrolls.
# - A table's cells wrap: prose anywhere, inline code at its spaces (jdrop.css). So a table's
#   narrowest layout is, for each column, its longest unbreakable run (a word of code and the
#   punctuation touching it) plus the cell's 2 * 8 px of padding, and an auto-layout table is
#   never wider than its box when those add up to at most the box. A table's font is 0.875 of
#   16 px, its code 0.875 of that, 12.25 px, at 0.602 em = 7.37 px a character, with 2 * 4 px of
#   padding; a prose character counts as a full em, 14 px, an upper bound on any glyph of the
#   text fonts, and a cell with no code needs one such glyph. The rule is sufficient: a table it
#   accepts fits at the full width; it may reject a table with a lot of prose glued to code that
#   would still fit. In a narrower window a table scrolls inside the theme's container.
BOX = 790.0  # the article's content box at the full page width (px)
PRE_PADDING = 2 * 16.0  # a <pre>'s padding
DD_INDENT = 32.0  # an API entry's body (<dd>) is indented by 2rem
PRE_CHAR = 0.602 * 14.0  # a monospace character in a code block (px)
MAX_COLUMNS = 80  # the design limit for a line of code, whatever the box
CELL_PADDING = 2 * 8.0
CELL_CODE_CHAR = 0.602 * 12.25
CELL_CODE_PADDING = 2 * 4.0
CELL_PROSE_CHAR = 14.0  # an em of the table's font: at least as wide as any glyph of it


class Element:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: "Element | None"):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element | str] = []

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def iter(self, tag: str) -> "list[Element]":
        found = []
        for child in self.children:
            if isinstance(child, Element):
                if child.tag == tag:
                    found.append(child)
                found.extend(child.iter(tag))
        return found

    def ancestors(self) -> "list[Element]":
        node, found = self.parent, []
        while node is not None:
            found.append(node)
            node = node.parent
        return found


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def parse(html: str) -> Element:
    from html.parser import HTMLParser

    root = Element("#document", {}, None)

    class Builder(HTMLParser):
        node = root

        def handle_starttag(self, tag, attrs):
            element = Element(tag, dict(attrs), self.node)
            self.node.children.append(element)
            if tag not in VOID:
                self.node = element

        def handle_endtag(self, tag):
            node = self.node
            while node.parent is not None and node.tag != tag:
                node = node.parent
            if node.parent is not None:
                self.node = node.parent

        def handle_data(self, data):
            self.node.children.append(data)

    builder = Builder(convert_charrefs=True)
    builder.feed(html)
    return root


def line_limit(pre: Element) -> int:
    """The most characters a line of this <pre> may have (the rule above)."""
    box = BOX - PRE_PADDING
    for ancestor in pre.ancestors():
        if ancestor.tag == "article":
            break
        if ancestor.tag == "dd":
            box -= DD_INDENT
        # Anything else that indents (a list, a quote, an admonition, a table) is not in the
        # rule: add its indent here when a page first puts a code block in one.
        assert ancestor.tag in {"div", "section", "dd", "dl"}, f"a code block in a <{ancestor.tag}>"
    return min(MAX_COLUMNS, int(box // PRE_CHAR))


def overflowing_lines(pre: Element) -> list[str]:
    limit = line_limit(pre)
    return [line for line in pre.text().expandtabs().splitlines() if len(line) > limit]


def cell_min_width(cell: Element) -> float:
    """A table cell's narrowest width: its longest unbreakable run, plus padding."""
    # The cell as (text, is code) pieces, in order.
    pieces: list[tuple[str, bool]] = []

    def walk(node: Element, in_code: bool) -> None:
        for child in node.children:
            if isinstance(child, str):
                pieces.append((child, in_code))
            else:
                walk(child, in_code or child.tag == "code")

    walk(cell, False)
    widest, run, run_has_code, codes_in_run = CELL_PROSE_CHAR, 0.0, False, set()
    for index, (text, is_code) in enumerate(pieces):
        for char in text:
            if char.isspace():
                if run_has_code:
                    widest = max(widest, run + CELL_CODE_PADDING * len(codes_in_run))
                run, run_has_code, codes_in_run = 0.0, False, set()
            elif is_code:
                run += CELL_CODE_CHAR
                run_has_code = True
                codes_in_run.add(index)
            else:
                run += CELL_PROSE_CHAR
    if run_has_code:
        widest = max(widest, run + CELL_CODE_PADDING * len(codes_in_run))
    return widest + CELL_PADDING


def table_min_width(table: Element) -> float:
    columns: dict[int, float] = {}
    for row in table.iter("tr"):
        cells = [child for child in row.children if isinstance(child, Element) and child.tag in {"td", "th"}]
        for column, cell in enumerate(cells):
            assert "colspan" not in cell.attrs and "rowspan" not in cell.attrs, "a spanning cell is not in the rule"
            columns[column] = max(columns.get(column, 0.0), cell_min_width(cell))
    return sum(columns.values())


def test_code_blocks_fit_their_boxes(site):
    too_long = {}
    for name, content in articles(site).items():
        for pre in content.iter("pre"):
            if lines := overflowing_lines(pre):
                too_long.setdefault(name, []).extend(lines)
    assert not too_long, f"code lines longer than their box holds: {too_long}"


def test_tables_fit_their_boxes(site):
    too_wide = {}
    for name, content in articles(site).items():
        for table in content.iter("table"):
            width = table_min_width(table)
            if width > BOX:
                too_wide.setdefault(name, []).append((round(width), table.text()[:80]))
    assert not too_wide, f"tables whose narrowest layout is wider than {BOX} px: {too_wide}"


def test_the_rule_reads_jdrop_css(site):
    # The table rule holds only with jdrop.css's wrapping, loaded by every page.
    css = (site / "_static" / "jdrop.css").read_text()
    assert "overflow-wrap: anywhere;" in css and "white-space: normal;" in css
    for name in articles(site):
        assert "_static/jdrop.css" in (site / name).read_text(), name
