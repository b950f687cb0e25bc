"""The documentation site: every page's code runs as printed, and the API pages document every public name.

The build itself (``sphinx-build -W``, every warning an error) is a step of ``.ci/run``, which
installs the docs extra for it.
"""

import importlib
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("*.md"))
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.DOTALL | re.MULTILINE)
# The autodoc directives of the API pages (``.. autofunction:: jdrop.dropout`` and the others) and
# the names they document.
AUTODOC = re.compile(r"^\.\. auto(?:function|class|data|exception)::\s+([\w.]+)", flags=re.MULTILINE)
# The names in an ``.. autosummary::`` table, relative to the page's ``.. currentmodule::``.
AUTOSUMMARY = re.compile(r"^\.\. autosummary::\n\n((?:   \w+\n)+)", flags=re.MULTILINE)
PUBLIC_MODULES = ("jdrop", "jdrop.nnx", "jdrop.linen", "jdrop.equinox")
# docs/api.md is the index (the key rule and the modules); each public module has its page.
API_PAGES = {module: DOCS / "api" / f"{module.removeprefix('jdrop.')}.md" for module in PUBLIC_MODULES}


def python_blocks(page: Path) -> list[str]:
    return PYTHON_BLOCK.findall(page.read_text())


def test_pages_have_code():
    pages_with_code = [page.name for page in PAGES if python_blocks(page)]
    assert {"index.md", "getting_started.md", "family.md", "mc_dropout.md", "scaling.md"} <= set(pages_with_code)


@pytest.mark.slow  # the pages' training loops, end to end
@pytest.mark.standard_promotion  # the pages train with optax.adam, as users do
@pytest.mark.parametrize("page", [page for page in PAGES if python_blocks(page)], ids=lambda page: page.name)
def test_page_code_runs(page, capsys):
    # One namespace per page, shared by its blocks in order, with nothing injected: each page
    # imports what it uses.
    namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
    for index, block in enumerate(python_blocks(page)):
        exec(compile(block, f"{page.name} block {index}", "exec"), namespace)
    capsys.readouterr()
    # A training loop on a page must actually learn: every evaluation it leaves behind in a
    # variable named test... is an accuracy on held-out data.
    evaluations = {
        name: value for name, value in namespace.items() if name.startswith("test") and isinstance(value, dict)
    }
    for name, metrics in evaluations.items():
        assert float(metrics["accuracy"]) > 0.9, (page.name, name, metrics)


def documented_names(page: Path) -> set[str]:
    return set(AUTODOC.findall(page.read_text()))


def all_documented_names() -> set[str]:
    return set().union(*(documented_names(page) for page in (DOCS / "api").glob("*.md")))


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_api_page_documents_every_public_name(module_name):
    # Each module's names on that module's page.
    module = importlib.import_module(module_name)
    missing = {f"{module_name}.{name}" for name in module.__all__} - documented_names(API_PAGES[module_name])
    assert not missing, f"{API_PAGES[module_name]} has no autodoc entry for {sorted(missing)}"


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_api_page_summary_lists_every_entry(module_name):
    page = API_PAGES[module_name].read_text()
    assert f".. currentmodule:: {module_name}\n" in page
    summarised = {f"{module_name}.{name}" for table in AUTOSUMMARY.findall(page) for name in table.split()}
    assert summarised == documented_names(API_PAGES[module_name])


def test_api_page_documents_only_public_names():
    public = {
        f"{module_name}.{name}"
        for module_name in PUBLIC_MODULES
        for name in importlib.import_module(module_name).__all__
    }
    assert all_documented_names() <= public


def toctree_entries(page: Path) -> set[str]:
    toctree = "\n".join(re.findall(r"```\{toctree\}\n(.*?)```", page.read_text(), flags=re.DOTALL))
    return {line.strip() for line in toctree.splitlines() if line.strip() and not line.startswith(":")}


def test_every_page_is_in_the_toctree():
    assert {page.stem for page in PAGES} - {"index"} <= toctree_entries(DOCS / "index.md")
    assert {f"api/{page.stem}" for page in (DOCS / "api").glob("*.md")} == toctree_entries(DOCS / "api.md")
    assert set(API_PAGES.values()) == set((DOCS / "api").glob("*.md"))
