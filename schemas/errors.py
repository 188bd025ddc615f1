"""Turn pydantic validation errors into messages a user can act on: file, field path, problem."""

from __future__ import annotations

from pydantic import ValidationError


def field_path(loc: tuple, skip_tags: frozenset[str] = frozenset()) -> str:
    """`checks[0].pattern` from pydantic's loc tuple; union tags (``skip_tags``) after an index are not locations."""
    parts: list[str] = []
    previous = None
    for item in loc:
        if not (isinstance(previous, int) and item in skip_tags):
            parts.append(f"[{item}]" if isinstance(item, int) else ("." if parts else "") + str(item))
        previous = item
    return "".join(parts) or "(top level)"


def describe(where: str, what: str, exc: ValidationError, skip_tags: frozenset[str] = frozenset()) -> str:
    lines = [f"{where}: invalid {what}"]
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid" and isinstance(err.get("input"), dict):
            message = f"unknown check type {err['input'].get('type')!r} (known: {', '.join(sorted(skip_tags))})"
        lines.append(f"  field `{field_path(err['loc'], skip_tags)}`: {message}")
    return "\n".join(lines)
