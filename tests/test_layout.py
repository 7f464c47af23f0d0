"""The layout the redesign keeps (issue 17): each family in one module that registers a record, the shared
code family-blind, so that a new family is one module plus one YAML config."""
import ast
import dataclasses
import os
import re

import pytest
import torch
import yaml
from torch import nn

import modules.family as family_module
from modules.config import Config, GeneratorTrainParams, config_from_dict
from modules.family import Family, register, registered

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPARES_A_FAMILY = re.compile(r"family\s*(==|!=|in\s*[(\[{])")


def project_python_files():
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("tests", "log", "data", "build")]
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), REPO)


def test_only_family_code_compares_a_family():
    offenders = []
    for path in project_python_files():
        if path.startswith(os.path.join("modules", "families")) or path == os.path.join("modules", "family.py"):
            continue
        with open(os.path.join(REPO, path), encoding="utf-8") as stream:
            for number, line in enumerate(stream, 1):
                if COMPARES_A_FAMILY.search(line.split("#")[0]):
                    offenders.append(f"{path}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


LONG_FILES_ALLOWED = {os.path.join("scripts", "synthetic_dataset.py"), os.path.join("modules", "video_io.py")}


def test_no_file_over_400_lines_and_no_function_over_60():
    """Short enough to read at once: files of at most 400 lines (the renderer and the video layer aside),
    functions of at most 60, scripts and benchmarks included."""
    long_files, long_functions = [], []
    for path in project_python_files():
        with open(os.path.join(REPO, path), encoding="utf-8") as stream:
            text = stream.read()
        lines = text.count("\n")
        if lines > 400 and path not in LONG_FILES_ALLOWED:
            long_files.append(f"{path}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{path}:{node.lineno}: {node.name} {length} lines")
    assert not long_files and not long_functions, "\n".join(long_files + long_functions)


def test_every_registered_family_names_itself_and_its_networks():
    families = registered()
    assert list(families)[0] == "keypoint_mask"          # the paper's model: the default, listed first
    assert set(families) == {"keypoint_mask", "fomm", "perturbed", "detector"}
    for name, record in families.items():
        fields = {f.name: f for f in dataclasses.fields(record.model_params)}
        assert fields["family"].default == name
        assert record.networks and len(set(record.networks)) == len(record.networks)
        assert dataclasses.is_dataclass(record.train_params)


class ToyModel(nn.Module):
    """A fifth family's whole model: the prediction is the source, brightened by one learned number."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))


def test_a_fifth_family_is_one_registered_record_and_one_config(tmp_path, monkeypatch):
    monkeypatch.setattr(family_module, "_REGISTRY", dict(family_module._REGISTRY))

    @dataclasses.dataclass
    class Common:
        num_channels: int = 3
        scale_factor: float = 1.0

    @dataclasses.dataclass
    class Params:
        common_params: Common = dataclasses.field(default_factory=Common)
        family: str = "toy"

    def load(config, checkpoint, source):
        model = ToyModel()
        model.load_state_dict(checkpoint["generator"])
        return model

    register(Family(name="toy", model_params=Params, train_params=GeneratorTrainParams,
                    build=lambda config, checkpoint_with_kp=None: ToyModel(), load=load,
                    trainable=lambda config, model, perceptual: None, networks=("generator",),
                    title=lambda params: "toy", reads_detector=False))
    data = yaml.safe_load("""
dataset_params: {root_dir: data, frame_shape: [64, 64, 3]}
model_params: {family: toy}
train_params: {num_epochs: 1, batch_size: 1, checkpoint_freq: 1, lr_generator: 1.0e-4, scales: [1],
               loss_weights: {perceptual: [1]}}
""")
    config = config_from_dict(data, "toy.yaml")
    assert isinstance(config, Config) and config.motion_name == "toy" and not config.relative_motion_possible
    assert config_from_dict(config.to_dict(), "saved").to_dict() == config.to_dict()
    from modules.models import build_model, model_from_checkpoint
    model = build_model(config)
    with torch.no_grad():
        model.gain.fill_(2.0)
    loaded = model_from_checkpoint(config, {"generator": model.state_dict()}, "toy.pth.tar")
    assert loaded.gain.item() == 2.0
    with pytest.raises(Exception, match="model_params.family: expected one of 'keypoint_mask'.*'toy'"):
        config_from_dict({**data, "model_params": {"family": "toyy"}}, "toy.yaml")


def test_setup_installs_every_package_of_the_project():
    with open(os.path.join(REPO, "setup.py"), encoding="utf-8") as stream:
        listed = set(re.search(r"packages=\[([^\]]*)\]", stream.read()).group(1).replace('"', "").replace(" ", "").split(","))
    found = {os.path.relpath(folder, REPO).replace(os.sep, ".")
             for folder, _, files in os.walk(os.path.join(REPO, "modules")) if "__init__.py" in files}
    assert found <= listed, f"setup.py packages miss {sorted(found - listed)}"
