"""Reading a YAML config safely: ``yaml.safe_load`` semantics (no code-carrying tags), but duplicate keys,
recursive aliases and alias bombs are refused before the document is built."""
from __future__ import annotations

from typing import Any, Optional

import yaml

from modules.core.errors import ConfigError

# A config holds a few hundred values; aliases may not expand it beyond this (a "billion laughs" bomb of a few
# hundred bytes would otherwise fill the memory when the document is copied).
MAX_YAML_VALUES = 100_000


def _yaml_problem(node: yaml.Node) -> Optional[str]:
    """What makes a composed YAML document unfit for a config: a duplicate key, a recursive alias, or more than
    MAX_YAML_VALUES values once aliases are expanded. Counted on the node graph, where an alias is one shared
    node, so the check itself never expands anything."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(current: yaml.Node) -> int:
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _YamlRefused(f"a recursive alias at line {current.start_mark.line + 1}")
        active.add(key)
        total = 1
        if isinstance(current, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in current.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise _YamlRefused(f"duplicate key {key_node.value!r} at line {key_node.start_mark.line + 1} "
                                           f"(first at line {seen[key_node.value]})")
                    seen[key_node.value] = key_node.start_mark.line + 1
                total += size(key_node) + size(value_node)
        elif isinstance(current, yaml.SequenceNode):
            total += sum(size(child) for child in current.value)
        if total > MAX_YAML_VALUES:
            raise _YamlRefused(f"its aliases expand to more than {MAX_YAML_VALUES:,} values (an alias bomb?)")
        active.discard(key)
        sizes[key] = total
        return total

    try:
        size(node)
    except _YamlRefused as refused:
        return str(refused)
    return None


class _YamlRefused(Exception):
    pass


def read_yaml(path: str) -> Any:
    """``yaml.safe_load`` of a file, refusing duplicate keys and alias bombs (``_yaml_problem``) before the
    document is built; a ConfigError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as stream:
            loader = yaml.SafeLoader(stream)
            try:
                node = loader.get_single_node()
                if node is None:
                    return None
                problem = _yaml_problem(node)
                if problem:
                    raise ConfigError(f"{path}: {problem}")
                return loader.construct_document(node)
            finally:
                loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected UTF-8 YAML)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML config file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config ({error.strerror or error})") from None

