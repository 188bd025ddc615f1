"""Safe YAML for what users write (prompt specs, configs, ``--set`` values).

Beyond ``yaml.safe_load`` (no Python objects): a duplicate key is an error instead of silently keeping
the last one, aliases may not expand past ``MAX_NODES`` (a "billion laughs" file would otherwise take
hours to walk), nesting stops at ``MAX_DEPTH`` and a recursive alias is refused. Every error names
the file (``where``), the field path and, where it helps, the line.
"""

from __future__ import annotations

import yaml

MAX_NODES = 1_000_000  # after alias expansion; a large real spec has tens of thousands
MAX_DEPTH = 64
_PYTHON_TAG = "tag:yaml.org,2002:python/"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlInputError(ValueError):
    """A YAML document a user wrote is unsafe or malformed; the message starts with the file."""


def load_yaml(text: str, where: str) -> object:
    """Parse one YAML document safely; raises YamlInputError naming ``where`` and the field."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # the reader already refuses control characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _check(node, where, "", 0, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlInputError(f"{where}: not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise YamlInputError(f"{where}: not valid YAML: nested too deeply (at most {MAX_DEPTH} levels)") from exc
    finally:
        if loader is not None:
            loader.dispose()


def _field(path: str) -> str:
    return f"field `{path}`" if path else "the top level"


def _check(node: yaml.Node, where: str, path: str, depth: int, sizes: dict[int, int], open_: set[int]) -> int:
    """Expanded node count under ``node``; raises on python tags, duplicate keys, depth, size and cycles."""
    if id(node) in sizes:
        return sizes[id(node)]
    line = node.start_mark.line + 1
    if id(node) in open_:
        raise YamlInputError(f"{where}: {_field(path)} (line {line}): a recursive alias is not allowed")
    if depth > MAX_DEPTH:
        raise YamlInputError(f"{where}: {_field(path)} (line {line}): nested deeper than {MAX_DEPTH} levels")
    if node.tag.startswith(_PYTHON_TAG):
        raise YamlInputError(
            f"{where}: {_field(path)} (line {line}): the Python tag !!{node.tag.split(':', 2)[-1]} "
            "is refused (specs and configs are loaded as safe YAML, never as Python objects)"
        )
    open_.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            size += _check(child, where, f"{path}[{i}]", depth + 1, sizes, open_)
    elif isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            child_path = f"{path}.{name}" if path else str(name)
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                if (key.tag, key.value) in seen:
                    raise YamlInputError(
                        f"{where}: {_field(child_path)}: duplicate key (lines {seen[(key.tag, key.value)]} and "
                        f"{key.start_mark.line + 1}); YAML would silently keep only the last one"
                    )
                seen[(key.tag, key.value)] = key.start_mark.line + 1
            size += _check(key, where, child_path, depth + 1, sizes, open_)
            size += _check(value, where, child_path, depth + 1, sizes, open_)
    if size > MAX_NODES:
        raise YamlInputError(
            f"{where}: {_field(path)} (line {line}): aliases expand to over {MAX_NODES:,} values (a YAML bomb?)"
        )
    open_.discard(id(node))
    sizes[id(node)] = size
    return size
