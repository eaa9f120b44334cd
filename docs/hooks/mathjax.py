"""MkDocs hook: serve MathJax from the built site, so that the docs render formulas offline.

MathJax 3 comes from the ``django-static-mathjax`` wheel (a Python package named ``mathjax``
holding MathJax's own ``es5`` build; no dependencies), installed with the ``docs`` extra. After
the build, the one component the site loads (``tex-mml-chtml.js``) and its CHTML web fonts are
copied to ``site/js/mathjax/``, the path ``mkdocs.yml`` names; MathJax finds the fonts beside its
script.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

COMPONENT = "tex-mml-chtml.js"
FONTS = Path("output") / "chtml" / "fonts" / "woff-v2"


def mathjax_dir() -> Path:
    """The installed MathJax ``es5`` folder, or an error saying which extra installs it."""
    try:
        import mathjax
    except ImportError as exc:
        raise RuntimeError("the docs need MathJax offline: pip install -e \".[docs]\" "
                           "(django-static-mathjax)") from exc
    return Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"


def on_post_build(config: Any, **kwargs: Any) -> None:
    src = mathjax_dir()
    dest = Path(config["site_dir"]) / "js" / "mathjax"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / COMPONENT, dest / COMPONENT)
    shutil.copytree(src / FONTS, dest / FONTS, dirs_exist_ok=True)
