"""MkDocs hook: show Sphinx cross-reference roles in docstrings as plain code.

Docstrings in trainmap use Sphinx roles (":func:`~trainmap.recipe.make_recipe`"); mkdocstrings
renders them as ":func:" followed by code. This hook drops the role and, like Sphinx, shortens a
``~``-prefixed path to its last component.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|attr|data|obj|exc|const|ref):(<code>)(~?)([^<]*)(</code>)")


def _replace(m: re.Match) -> str:
    target = m.group(3)
    if m.group(2):
        target = target.rsplit(".", 1)[-1]
    return f"{m.group(1)}{target}{m.group(4)}"


def on_page_content(html: str, **_: object) -> str:
    """Rewrite the page's HTML (MkDocs ``on_page_content`` event)."""
    return ROLE.sub(_replace, html)
