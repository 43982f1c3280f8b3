"""The one way a pydantic validation error becomes a message: `where: key.sub: problem (allowed)`.

Scenario files (`scenarios.loader`), agent configs (`agents.config`) and the perception training
configs (`perception.loop`) all validate with strict pydantic classes and report mistakes the same
way: one line per key, joined by '; ', naming where the values came from (a file, or a config
class), the dotted key, what is wrong and, for an unknown key, which keys are allowed there.

It lives at the bottom of the layering (`scenarios`) so every package can use it.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Collection

from pydantic import ValidationError


def describe_validation_error(
    cls: type, error: ValidationError, where: object, prefix: str = "", hidden: Collection[str] = ()
) -> str:
    """`where: prefix.key: what is wrong (what is allowed)`, one per key, joined by '; '.

    cls: the validated pydantic dataclass or model; where: the file (or class name) named first;
    prefix: put before every key (e.g. "default." for a block of a file); hidden: field names that
    are never offered as allowed keys (set by the code, not by users).
    """
    lines: dict[str, str] = {}
    for problem in error.errors():
        location = _field_path(cls, problem["loc"])
        key = prefix + ".".join(location) if location else prefix.rstrip(".") or "<top level>"
        kind = problem["type"]
        if kind in ("unexpected_keyword_argument", "extra_forbidden"):
            allowed = _allowed_keys(cls, location[:-1], hidden)
            message = f"unknown key; allowed keys here: {', '.join(allowed)}"
        elif kind in ("missing", "missing_argument"):
            message = "required key is missing"
        elif kind == "value_error":  # our own validators: their message already says what was given
            message = str(problem.get("ctx", {}).get("error", problem["msg"]))
        else:
            value = problem.get("input")
            message = f"{problem['msg']} (got {value!r})"
            if isinstance(value, str) and _is_number(value):
                message += f"; YAML reads {value} as text: write numbers with a decimal point, e.g. 5.0e-4"
        lines[key] = f"{where}: {key}: {message}"  # for a union (int | float) the last member says most
    return "; ".join(lines.values())


def _fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a pydantic dataclass or model."""
    return {name: info.annotation for name, info in getattr(cls, "__pydantic_fields__", {}).items()}


def _field_path(cls: type, loc: tuple) -> list[str]:
    """The location as field names and list indices, without pydantic's union-member tags ('int', 'float')."""
    parts: list[str] = []
    current: type | None = cls
    for part in loc:
        if isinstance(part, int):
            parts.append(str(part))
            continue
        if current is None:  # below a plain value: the rest are pydantic's tags
            break
        fields = _fields(current)
        parts.append(str(part))
        if part not in fields:  # an unknown key
            break
        current = _model_of(fields[part])
    return parts


def _allowed_keys(cls: type, location: list[str], hidden: Collection[str]) -> list[str]:
    """Field names of the class found by following `location` down from `cls`."""
    for part in location:
        nested = _model_of(_fields(cls).get(part))
        if nested is None:
            return []
        cls = nested
    return sorted(name for name in _fields(cls) if name not in hidden)


def _model_of(annotation: Any) -> type | None:
    """The pydantic class in an annotation (`X`, `X | None`), or None for plain values."""
    if isinstance(annotation, type) and hasattr(annotation, "__pydantic_fields__"):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            found = _model_of(member)
            if found is not None:
                return found
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
