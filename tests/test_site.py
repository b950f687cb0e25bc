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
    found = sorted(site.rglob("*.html"))
    assert len(found) > 10
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
