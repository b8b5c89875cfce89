"""A griffe extension of the docs' build (mkdocs.yml): the docstrings' reST markup as Markdown.

The docstrings name other objects with Sphinx roles (``:class:`Message```), which Markdown shows
as they are; the API reference shows each as the name in code (``Message``; ``~a.b.C`` as ``C``).
A literal block's ``::`` goes as reST has it: alone on its line, or after a space, it is dropped;
``text::`` becomes ``text:``. The indented block after it is a code block in Markdown too.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj|const):`(~?)([^`]+)`")

# A paragraph's last line ending in "::", followed by a blank line (what starts a literal block).
_LITERAL = re.compile(r"^(?P<text>[^\n]*?)(?P<space>[ \t]*)::[ \t]*$(?=\n[ \t]*$)", re.MULTILINE)


def _literal(found: re.Match[str]) -> str:
    text = found["text"]
    if not text.strip() or found["space"]:
        return text.rstrip()
    return f"{text}:"


def _as_code(found: re.Match[str]) -> str:
    name = found[2].split(".")[-1] if found[1] else found[2]
    return f"`{name}`"


class SphinxRoles(griffe.Extension):
    """Rewrites the roles and literal-block markers of every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = _ROLE.sub(_as_code, obj.docstring.value)
            obj.docstring.value = _LITERAL.sub(_literal, value)
