"""Reading a config: ``load_config(path)`` reads the YAML safely, lets the family rewrite legacy keys, builds the
typed sections (modules/config/sections.py) and runs the cross-field checks (modules/config/checks.py); every
problem is a one-line ``ConfigError`` naming the file, the key path and what was expected."""
from __future__ import annotations

import os
import warnings
from typing import Any, Optional

from modules.config.checks import check_config
from modules.config.family import Family, family_name, registered
from modules.config.schema import build, convert
from modules.config.sections import Config
from modules.config.yaml_reader import read_yaml
from modules.core.errors import ConfigError, ConfigWarning


def _family(data: dict, file: str) -> Family:
    name = family_name(data)
    families = registered()
    if name not in families:
        raise ConfigError(f"{file}: model_params.family: expected one of {', '.join(map(repr, families))}, "
                          f"got {name!r}")
    return families[name]


def config_from_dict(data: dict, file: str = "<dict>") -> Config:
    """Validate and build a Config from plain data (a parsed YAML document)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a YAML mapping at the top level, got {type(data).__name__}")
    data = _deep_copy(data)
    family = _family(data, file)
    family.map_legacy(data, file)
    # The family picks the schemas of model_params and train_params; build takes the finished dataclasses.
    for section, schema in (("model_params", family.model_params), ("train_params", family.train_params)):
        if section not in data:
            raise ConfigError(f"{file}: missing key '{section}' (a mapping)")
        data[section] = convert(schema, data[section], section, file)
    config = build(Config, data, "", file)
    config.path = file
    check_config(config, file)
    if not config.relative_motion_possible and "animate_params" in data and \
            "normalization_params" in (data.get("animate_params") or {}):
        warnings.warn(f"{file}: animate_params.normalization_params has no effect with a "
                      f"{config.motion_name} (it animates absolutely)", ConfigWarning,
                      stacklevel=2)
    return config


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _repository_of(path: str) -> list[str]:
    """The folders a file's relative data paths may be meant from: its folder and the ones above it, up to the
    repository holding it (the first with setup.py or .git); just its folder and the one above if none does."""
    folder = os.path.dirname(os.path.abspath(path))
    chain = [folder]
    while True:
        if os.path.exists(os.path.join(chain[-1], "setup.py")) or os.path.exists(os.path.join(chain[-1], ".git")):
            return chain
        parent = os.path.dirname(chain[-1])
        if parent == chain[-1]:
            return chain[:2]
        chain.append(parent)


def resolve_data_paths(config: "Config", anchor: Optional[str]) -> None:
    """Relative ``dataset_params.root_dir`` / ``pairs_list`` and ``metrics_params.keypoint_regressor``: the
    current folder first (what they always meant), then the folders of the repository that ``anchor`` (the model
    file, checkpoint or config they came from) lies in, so ``models/tiny-heatmap.pth.tar`` works from any folder.
    A path found nowhere is left as it is; ``dataset_params.searched`` keeps where it was looked for."""
    bases = [os.getcwd()] + ([] if anchor is None or not os.path.exists(anchor) else _repository_of(anchor))
    bases = list(dict.fromkeys(os.path.abspath(b) for b in bases))

    def find(value: Optional[str]) -> tuple[Optional[str], list[str]]:
        if value is None or os.path.isabs(value) or os.path.exists(value):
            return value, []
        tried = [os.path.join(base, value) for base in bases]
        return next((path for path in tried if os.path.exists(path)), value), tried

    data = config.dataset_params
    data.root_dir, data.searched = find(data.root_dir)
    data.pairs_list, _ = find(data.pairs_list)
    metrics = config.metrics_params
    metrics.keypoint_regressor, _ = find(metrics.keypoint_regressor)


# What a config says about evaluating and showing a trained model, as opposed to what its networks and data are.
# These sections of a --config given beside a checkpoint that holds its own config replace the checkpoint's, so
# that metric settings (metrics_params.landmarks, say) can change after training without editing a checkpoint.
EVALUATION_SECTIONS = ("reconstruction_params", "animate_params", "metrics_params", "visualizer_params")


def with_evaluation_sections(data: dict, config_path: str) -> tuple[dict, list[str]]:
    """``data`` (a checkpoint's config) with the EVALUATION_SECTIONS keys of the YAML file ``config_path`` laid
    over it, key by key; returns (the new data, the sections the file changed)."""
    override = read_yaml(config_path)
    if not isinstance(override, dict):
        raise ConfigError(f"{config_path}: expected a YAML mapping at the top level, got {type(override).__name__}")
    merged, changed = _deep_copy(data), []
    metrics = override.get("metrics_params")
    regressor = metrics.get("keypoint_regressor") if isinstance(metrics, dict) else None
    if isinstance(regressor, str) and not os.path.isabs(regressor) and not os.path.exists(regressor):
        # as resolve_data_paths reads a config's paths: the current folder first, then this file's repository
        # (not the checkpoint's, which resolve_data_paths would search next)
        found = [os.path.join(base, regressor) for base in _repository_of(config_path)]
        metrics["keypoint_regressor"] = next((path for path in found if os.path.exists(path)), regressor)
    for section in EVALUATION_SECTIONS:
        given = override.get(section)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise ConfigError(f"{config_path}: {section}: expected a mapping, got {type(given).__name__}")
        before = merged.get(section) or {}
        after = _laid_over(before, given)
        if after != before:
            merged[section] = after
            changed.append(section)
    return merged, changed


def _laid_over(base: dict, top: dict) -> dict:
    """``base`` with ``top``'s keys replacing its own, nested mappings merged the same way."""
    result = _deep_copy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _laid_over(result[key], value)
        else:
            result[key] = _deep_copy(value)
    return result


def load_config(path: str | os.PathLike) -> Config:
    """Read a YAML config (``read_yaml``: safe loading, no duplicate keys, bounded aliases) and validate it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"{path}: is a folder, expected a YAML config file")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    return config_from_dict(read_yaml(path), path)
