"""Where a key is in ``stack.yml``: lines of key paths, and keys written twice.

PyYAML keeps the last of two equal keys in a mapping without a word, so a setting
written twice silently loses its first value; :func:`duplicate_keys` finds every such
pair in the composed tree, which also gives each key's line for error messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

from stack.errors import ConfigError


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the key (or item) at ``loc`` in the composed YAML tree; where the
    path leaves the tree, the line of the deepest key that was found."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def duplicate_keys(node: yaml.Node | None, file: str) -> list[ConfigError]:
    """One error per key written twice in the same mapping, at the second one's line."""
    return [
        ConfigError(
            f"key written twice (first on line {first})",
            file=file,
            line=second,
            key=".".join(path),
            hint="keep one of them: YAML would silently use only the last",
        )
        for path, first, second in _duplicates(node, ())
    ]


def _duplicates(
    node: yaml.Node | None, path: tuple[str, ...]
) -> Iterator[tuple[list[str], int, int]]:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            line = key.start_mark.line + 1
            if name in seen:
                yield [*path, name], seen[name], line
            else:
                seen[name] = line
            yield from _duplicates(value, (*path, name))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicates(item, (*path, str(index)))
