"""The JSONPath subset the REST source needs to find records and page tokens in a body.

Supported: ``$`` (the whole document), ``.name`` and ``['name']`` (a key), ``[n]`` (a list
index, negative from the end), ``[*]`` and ``.*`` (every item of a list or value of an
object). No filters, slices or recursive descent: a selector is a path, evaluated in a few
dict look-ups per page, never per record.

>>> JsonPath("$.data[*].id").find({"data": [{"id": 1}, {"id": 2}]})
[1, 2]
>>> JsonPath("$.meta.next").first({"meta": {"next": "abc"}})
'abc'
"""

from __future__ import annotations

import re
from typing import Any

_STEP = re.compile(
    r"\.(?P<key>[A-Za-z_$@-][\w$@-]*)|\[(?P<index>-?\d+)\]|(?P<all>\[\*\]|\.\*)"
    r"|\['(?P<quoted>[^']*)'\]|\[\"(?P<dquoted>[^\"]*)\"\]"
)


class JsonPathError(ValueError):
    """A path outside the supported subset."""


class JsonPath:
    """A compiled path; see the module docstring for the syntax."""

    __slots__ = ("_steps", "text")

    def __init__(self, text: str) -> None:
        text = text.strip()
        if not text.startswith("$"):
            raise JsonPathError(f"JSONPath {text!r} must start with $ (e.g. $.data)")
        steps: list[tuple[str, Any]] = []
        pos = 1
        while pos < len(text):
            match = _STEP.match(text, pos)
            if match is None:
                raise JsonPathError(
                    f"JSONPath {text!r}: unsupported syntax at {text[pos:]!r} "
                    "(supported: $.a.b, $.a[*], $.a[0], $['a'])"
                )
            if match["key"] is not None:
                steps.append(("key", match["key"]))
            elif match["index"] is not None:
                steps.append(("index", int(match["index"])))
            elif match["all"] is not None:
                steps.append(("all", None))
            else:
                steps.append(
                    ("key", match["quoted"] if match["quoted"] is not None else match["dquoted"])
                )
            pos = match.end()
        self.text = text
        self._steps = tuple(steps)

    def __repr__(self) -> str:
        return f"JsonPath({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JsonPath) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    @property
    def is_root(self) -> bool:
        return not self._steps

    def plain_keys(self) -> tuple[str, ...] | None:
        """The keys of a path made of keys only, with at most a final ``[*]``; else None.

        Such a path can be followed through a typed (Arrow) reading of the body as well as
        through the parsed document: ``$.data`` and ``$.data[*]`` both give ``("data",)``.
        """
        steps = self._steps[:-1] if self._steps and self._steps[-1][0] == "all" else self._steps
        if any(kind != "key" for kind, _ in steps):
            return None
        return tuple(arg for _, arg in steps)

    def find(self, doc: Any) -> list[Any]:
        """Every value the path matches, in document order."""
        nodes = [doc]
        for kind, arg in self._steps:
            found: list[Any] = []
            for node in nodes:
                if kind == "key":
                    if isinstance(node, dict) and arg in node:
                        found.append(node[arg])
                elif kind == "index":
                    if isinstance(node, list) and -len(node) <= arg < len(node):
                        found.append(node[arg])
                elif isinstance(node, list):
                    found.extend(node)
                elif isinstance(node, dict):
                    found.extend(node.values())
            nodes = found
        return nodes

    def first(self, doc: Any) -> Any:
        """The first match, or None."""
        found = self.find(doc)
        return found[0] if found else None

    def records(self, doc: Any) -> list[Any]:
        """The records a selector picks: one matched list is the records, else the matches.

        ``$.data`` on ``{"data": [...]}`` and ``$.data[*]`` both give the list's items; ``$``
        on a top-level list gives its items, on an object that one object.
        """
        found = self.find(doc)
        if len(found) == 1:
            (only,) = found
            if isinstance(only, list):
                return only
            return [] if only is None else found
        return [item for item in found if item is not None]
