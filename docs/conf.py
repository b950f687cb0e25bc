"""Sphinx configuration for jdrop's documentation.

Build: ``pip install -e ".[docs]" && sphinx-build -W --keep-going -b html docs docs/_build/html``.
Neither the build nor the built site needs a network: there is no intersphinx, every page is
local, and the math renderer (MathJax, from the ``sphinx-mathjax-offline`` package) is copied
into the site's ``_static/mathjax`` rather than loaded from a CDN.
"""

import sphinx.util.inspect

import jdrop

project = "jdrop"
author = "the jdrop authors"
copyright = "the jdrop authors, Apache-2.0"
version = release = jdrop.__version__

extensions = [
    "sphinx.ext.autodoc",
    # One summary table per module page, linking to the entries below it.
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    # A [source] link beside every entry: jdrop's source, highlighted, in the site itself.
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
    # Ships MathJax 3 with the site (_static/mathjax/); must come after sphinx.ext.mathjax.
    "sphinx-mathjax-offline",
    "myst_parser",
    "sphinx_copybutton",
]

# The copy button copies code as one runs it: without the doctest prompts and the output lines of
# the API's examples; a block without prompts is copied whole.
copybutton_prompt_text = r">>> |\.\.\. "
copybutton_prompt_is_regexp = True

# The local copy, not sphinx.ext.mathjax's CDN default (set here as well as by the extension, so
# that no page names the CDN). MyST writes $...$ as the \(...\) that tex-chtml reads.
mathjax_path = "mathjax/tex-chtml.js"

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: $...$ and $$...$$ math, ::: fences for directives, anchors for headings.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# jdrop's docstrings are Google style.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# The tables link to the entries on the module's page: no page per object.
autosummary_generate = False

autodoc_member_order = "bysource"
# Signatures as one calls them, ``dropout(key, x, keep_prob, *, deterministic=False, ...)``; the
# types go beside the documented arguments.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
# Name the aliases rather than spelling out their unions.
autodoc_type_aliases = {
    "ArrayLike": "jax.typing.ArrayLike",
    "DTypeLike": "jax.typing.DTypeLike",
}
# Sphinx prints an alias inside a union (``ArrayLike | None``) by the repr of its placeholder,
# ``TypeAliasForwardRef('jax.typing.ArrayLike')``; make that repr the alias's name.
sphinx.util.inspect.TypeAliasForwardRef.__repr__ = lambda self: self.name
# Defaults as written in the source (``jnp.float32``, not ``<class 'jax.numpy.float32'>``).
autodoc_preserve_defaults = True

html_theme = "sphinx_book_theme"
html_static_path = ["_static"]
html_css_files = ["jdrop.css"]
html_title = f"jdrop {release}"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    # The sidebar has the search field; no second one in a header bar above it.
    "navbar_persistent": [],
}


def _module_comment(name: str) -> list[str] | None:
    """The ``#:`` comment above ``name`` in the jdrop module that defines it.

    ``jdrop.KEEP_PROB_BITS`` and the other public constants are documented where they are
    defined (``jdrop/_dropout.py``...) and re-exported by ``jdrop``; autodoc looks for the
    comment only in ``jdrop/__init__.py`` and would otherwise show the docstring of the value's
    type (``int``, ``list``).
    """
    import pkgutil

    from sphinx.pycode import ModuleAnalyzer

    for info in pkgutil.iter_modules(jdrop.__path__, "jdrop."):
        analyzer = ModuleAnalyzer.for_module(info.name)
        analyzer.analyze()
        if ("", name) in analyzer.attr_docs:
            return list(analyzer.attr_docs["", name])
    return None


def _data_docstring(app, what, name, obj, options, lines):
    if what == "data" and name.startswith("jdrop."):
        comment = _module_comment(name.rsplit(".", 1)[1])
        if comment is not None:
            lines[:] = comment
        elif lines and "\n".join(lines).strip() == (type(obj).__doc__ or "").strip():
            lines[:] = []


def _class_signature(app, what, name, obj, options, signature, return_annotation):
    """Flax NNX classes have a metaclass ``__call__(*args, **kwargs)``; show ``__init__``'s arguments."""
    import inspect

    if what == "class" and signature == "(*args, **kwargs)":
        params = list(inspect.signature(obj.__init__).parameters.values())[1:]
        params = [p.replace(annotation=inspect.Parameter.empty) for p in params]
        return str(inspect.Signature(params)), None
    return None


def _public_names() -> set[str]:
    import importlib

    return {
        f"{module}.{name}"
        for module in ("jdrop", "jdrop.nnx", "jdrop.linen", "jdrop.equinox")
        for name in importlib.import_module(module).__all__
    } | {"jdrop.nnx", "jdrop.linen", "jdrop.equinox"}


def _link_public_names(app, doctree):
    """Inline code that is exactly a public name, ``jdrop.dropout`` or ``jdrop.nnx.Dropout()``,
    links to its entry in the API reference, on the guides as in the docstrings."""
    from docutils import nodes
    from sphinx import addnodes

    public = _public_names()
    for literal in list(doctree.findall(nodes.literal)):
        if isinstance(literal.parent, (nodes.reference, addnodes.pending_xref)):
            continue
        target = literal.astext().removesuffix("()")
        if target not in public:
            continue
        kind = "mod" if target in {"jdrop.nnx", "jdrop.linen", "jdrop.equinox"} else "obj"
        xref = addnodes.pending_xref("", refdomain="py", reftype=kind, reftarget=target, refexplicit=True, refwarn=True)
        literal.replace_self(xref)
        literal["classes"] = [*literal["classes"], "xref", "py", f"py-{kind}"]
        xref += literal


def setup(app):
    app.connect("autodoc-process-docstring", _data_docstring)
    app.connect("autodoc-process-signature", _class_signature)
    app.connect("doctree-read", _link_public_names)
