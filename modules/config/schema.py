"""Plain YAML data -> typed dataclasses, with one-line errors that name the file, the key and what was expected.

``build(cls, data, prefix, file)`` fills the dataclass ``cls`` from a mapping: unknown keys, missing keys and
wrong types are ``ConfigError``s. The small checks below (``fail``, ``check_positive``, ``check_widths``) are
what the config reader and each family's schema use for their cross-field checks.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from modules.core.errors import ConfigError

REQUIRED = dataclasses.MISSING  # marker: a field without a default must be in the YAML


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(annotation))
        return " or ".join(_describe(a) for a in args) + (" or null" if nullable else "")
    if origin is list:
        (item,) = typing.get_args(annotation)
        return "a list of " + {int: "integers", float: "numbers", str: "strings", bool: "booleans"}[item]
    if dataclasses.is_dataclass(annotation):
        return "a mapping"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[annotation]


def convert(annotation: Any, value: Any, key: str, file: str) -> Any:
    def fail() -> typing.NoReturn:
        raise ConfigError(f"{file}: {key}: expected {_describe(annotation)}, got {value!r}")

    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        for inner in [a for a in typing.get_args(annotation) if a is not type(None)]:
            try:
                return convert(inner, value, key, file)
            except ConfigError:
                continue
        fail()
    if origin is Literal:
        if value not in typing.get_args(annotation):
            fail()
        return value
    if origin is list:
        if not isinstance(value, list):
            fail()
        (item,) = typing.get_args(annotation)
        return [convert(item, v, f"{key}[{i}]", file) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            fail()
        return build(annotation, value, key, file)
    if annotation is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if annotation is float:
        # YAML reads 2e-4 (no dot) as a string; accept it as the number it obviously is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                fail()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            fail()
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"unsupported annotation {annotation!r}")


def build(cls: type, data: dict, prefix: str, file: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(f"{file}: unknown key '{where}' (expected one of: {', '.join(fields)})")
    values = {}
    for name, spec in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(data.get(name)):
            values[name] = data[name]             # already built (model_params, by its family's schema)
            continue
        if name not in data:
            if spec.default is REQUIRED and spec.default_factory is REQUIRED:
                raise ConfigError(f"{file}: missing key '{key}' ({_describe(hints[name])})")
            continue
        values[name] = convert(hints[name], data[name], key, file)
    return cls(**values)



def fail(file: str, key: str, expected: str, value: Any) -> typing.NoReturn:
    raise ConfigError(f"{file}: {key}: expected {expected}, got {value}")


def check_positive(file: str, items: list[tuple[str, int]]) -> None:
    for key, value in items:
        if value < 1:
            fail(file, key, "a positive integer", value)


def check_rules(file: str, rules: list[tuple[str, Any, typing.Callable[[Any], bool], str]]) -> None:
    """Each (key, value, test, expected): the first value that fails its test is the error."""
    for key, value, test, expected in rules:
        if not test(value):
            fail(file, key, expected, value)


def check_widths(file: str, prefix: str, block_expansion: int, max_features: int) -> None:
    check_positive(file, [(f"{prefix}.block_expansion", block_expansion), (f"{prefix}.max_features", max_features)])
    if max_features < block_expansion:
        fail(file, f"{prefix}.max_features", f"at least {prefix}.block_expansion ({block_expansion})", max_features)


def is_inverse_integer(scale: float) -> bool:
    return 0 < scale <= 1 and abs(1 / scale - round(1 / scale)) <= 1e-6


def pop_path(data: dict, dotted: str) -> tuple[bool, Any]:
    """Remove ``a.b.c`` from nested mappings: (whether it was there, its value)."""
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            return False, None
    if leaf not in node:
        return False, None
    return True, node.pop(leaf)


def set_path(data: dict, dotted: str, value: Any, file: str, origin: str) -> None:
    """Set ``a.b.c`` (the new place of a legacy key ``origin``), refusing a different value already there."""
    node = data
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents):
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, dict):
            raise ConfigError(f"{file}: {'.'.join(parents[:depth + 1])}: expected a mapping, got {node!r}")
    if leaf in node and node[leaf] != value:
        raise ConfigError(f"{file}: {dotted} is {node[leaf]!r} but the legacy key {origin} says {value!r}; "
                          f"keep one of them")
    node[leaf] = value
