"""A griffe extension of the docs' build (mkdocs.yml): the docstrings' Sphinx roles as code.

The docstrings name other objects with Sphinx roles (``:class:`Message```), which Markdown shows
as they are; the API reference shows each as the name in code (``Message``; ``~a.b.C`` as ``C``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")


def _as_code(found: re.Match[str]) -> str:
    name = found[2].split(".")[-1] if found[1] else found[2]
    return f"`{name}`"


class SphinxRoles(griffe.Extension):
    """Rewrites the roles of every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_as_code, obj.docstring.value)
