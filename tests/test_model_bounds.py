"""A model file is input: the sizes its config asks for are bounded before anything is built
(modules/config/bounds.py), and the memory a run needs is estimated on the meta device and compared with what
the machine has (modules/families/memory.py), each a one-line error instead of a killed process."""
from __future__ import annotations

import copy
import glob
import os
import time
import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, config_path
from PIL import Image

import run
from modules.config.bounds import MAX_FRAME_SIDE, SIZE_BOUNDS
from modules.config.loading import config_from_dict, load_config
from modules.core.errors import ConfigError, UserError
from modules.core.memory import available_memory
from modules.families import memory
from modules.families.build import build_model
from modules.families.memory import MAX_PARAMETERS, activation_peak, check_memory, estimate_memory, parameter_count

TINY_MODEL = os.path.join(ROOT, "models", "tiny-heatmap.pth.tar")


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _yaml(name: str) -> dict:
    with open(config_path(name)) as stream:
        return yaml.safe_load(stream)


def _edited(data: dict, **paths) -> dict:
    """A deep copy of config data with dotted keys (``a__b__c`` for a.b.c) set."""
    data = copy.deepcopy(data)
    for dotted, value in paths.items():
        node = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return data


# ----------------------------------------------------------------------------------------------------------
# The bounds

def test_every_shipped_config_is_within_the_bounds_and_the_parameter_bound():
    for path in sorted(glob.glob(os.path.join(ROOT, "config", "*.yaml"))):
        config = _quiet(load_config, path)                  # check_config runs the bounds
        assert parameter_count(config) <= MAX_PARAMETERS


@pytest.mark.parametrize("variant", ["vox-256", "mgif-256", "bair-256", "512", "1024-wide"])
def test_official_fomm_configs_and_their_large_variants_are_within_the_bounds(variant):
    """FOMM's networks (vox, taichi, bair and mgif share them; mgif has one Jacobian map) and 512- and
    1024-px variants with wider and deeper networks than anyone ships."""
    data = _yaml("vox-256-fomm.yaml")
    changes = {
        "vox-256": {},
        "mgif-256": {"model_params__kp_detector_params__single_jacobian_map": True},
        "bair-256": {"model_params__common_params__num_kp": 10},
        "512": {"dataset_params__frame_shape": [512, 512, 3], "model_params__common_params__scale_factor": 0.125,
                "model_params__generator_params__dense_motion_params__scale_factor": 0.125},
        "1024-wide": {"dataset_params__frame_shape": [1024, 1024, 3],
                      "model_params__common_params__scale_factor": 0.0625,
                      "model_params__generator_params__dense_motion_params__scale_factor": 0.0625,
                      "model_params__generator_params__num_bottleneck_blocks": 64,
                      "model_params__generator_params__block_expansion": 128,
                      "model_params__generator_params__max_features": 2048,
                      "model_params__kp_detector_params__max_features": 2048},
    }[variant]
    config = _quiet(config_from_dict, _edited(data, **changes), variant)
    assert config.dataset_params.frame_shape[0] <= MAX_FRAME_SIDE


ABSURD = [
    ("dataset_params__frame_shape", [100000, 100000, 3], "dataset_params.frame_shape: height 100000", "4096"),
    ("model_params__generator_params__num_bottleneck_blocks", 1000000,
     "model_params.generator_params.num_bottleneck_blocks", "at most 128"),
    ("model_params__common_params__num_kp", 100000, "model_params.common_params.num_kp", "at most 256"),
    ("model_params__kp_detector_params__num_blocks", 10 ** 9, "model_params.kp_detector_params.num_blocks",
     "at most 10"),
    ("model_params__generator_params__num_up_blocks", 10 ** 9, "model_params.generator_params.num_up_blocks",
     "at most 6"),
    ("model_params__generator_params__high_res__max_features", 10 ** 7,
     "model_params.generator_params.high_res.max_features", "at most 4096"),
    ("model_params__kp_detector_params__block_expansion", 10 ** 6,
     "model_params.kp_detector_params.block_expansion", "at most 512"),
    ("train_params__transform_params__points_tps", 1000, "train_params.transform_params.points_tps", "at most 32"),
]


@pytest.mark.parametrize("key, value, named, bound", ABSURD, ids=[case[0].split("__")[-1] for case in ABSURD])
def test_an_absurd_size_is_one_line_naming_the_file_the_key_and_the_bound(key, value, named, bound):
    name = "tiny-detector.yaml" if "points_tps" in key else "tiny-heatmap.yaml"
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        _quiet(config_from_dict, _edited(_yaml(name), **{key: value}), "absurd.yaml")
    message = str(caught.value)
    assert message.startswith(f"absurd.yaml: {named}") and bound in message and "\n" not in message
    assert time.perf_counter() - started < 1


def test_every_bound_sits_above_the_paper_values():
    assert all(bound.most >= 6 for bound in SIZE_BOUNDS.values())
    assert SIZE_BOUNDS["max_features"].most >= 2048 and SIZE_BOUNDS["block_expansion"].most >= 128
    assert SIZE_BOUNDS["num_bottleneck_blocks"].most >= 64 and MAX_FRAME_SIDE >= 1024


# ----------------------------------------------------------------------------------------------------------
# Model files through run.py

def _model_file(tmp_path, name: str, **changes) -> str:
    checkpoint = torch.load(TINY_MODEL, map_location="cpu", weights_only=False)
    checkpoint["config"] = _edited(checkpoint["config"], **changes)
    path = str(tmp_path / name)
    torch.save(checkpoint, path)
    return path


def _inputs(tmp_path) -> tuple[str, str]:
    source, driving = str(tmp_path / "source.png"), tmp_path / "driving"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(source)
    driving.mkdir()
    for index in range(2):
        Image.fromarray(np.full((64, 64, 3), 40 * index, np.uint8)).save(driving / f"{index}.png")
    return source, str(driving)


def _run(*args: str) -> int:
    return _quiet(run.main, [*args, "--device", "cpu", "--engine", "torch", "--mixed_precision", "no"])


@pytest.mark.parametrize("mode, key, value, named", [
    ("animate", "dataset_params__frame_shape", [100000, 100000, 3], "dataset_params.frame_shape"),
    ("reconstruction", "model_params__generator_params__num_bottleneck_blocks", 1000000,
     "model_params.generator_params.num_bottleneck_blocks"),
])
def test_an_absurd_model_file_exits_at_once_with_one_line(tmp_path, capsys, mode, key, value, named):
    model = _model_file(tmp_path, "absurd.pth.tar", **{key: value})
    source, driving = _inputs(tmp_path)
    result = str(tmp_path / "result.mp4")
    extra = ["--source_image", source, "--driving_video", driving, "--result_video", result] \
        if mode == "animate" else []
    started = time.perf_counter()
    assert _run("--mode", mode, "--checkpoint", model, *extra) == 2
    assert time.perf_counter() - started < 15
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ") and "absurd.pth.tar:config" in lines[-1] and named in lines[-1]
    assert not os.path.exists(result)


def test_a_model_beyond_the_available_memory_is_refused_before_its_weights_are_built(tmp_path, capsys,
                                                                                      monkeypatch):
    """1024-px frames are within the bounds; 8 of them at once are not within a 256 MiB machine."""
    monkeypatch.setattr(memory, "available_memory", lambda device=None: (256 * 2 ** 20, "a test budget"))
    model = _model_file(tmp_path, "large.pth.tar", dataset_params__frame_shape=[1024, 1024, 3])
    source, driving = _inputs(tmp_path)
    result = str(tmp_path / "result.mp4")
    assert _run("--mode", "animate", "--checkpoint", model, "--source_image", source, "--driving_video", driving,
                "--result_video", result, "--crop", "none", "--driving_crop", "none") == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "large.pth.tar" in line
    assert "GiB of activations for 8 frames of 1024x1024" in line
    assert "only 0.25 GiB is available (a test budget)" in line and "--batch_size" in line
    assert not os.path.exists(result)


def test_an_absurd_config_file_for_training_exits_with_one_line(tmp_path, capsys):
    path = tmp_path / "absurd.yaml"
    path.write_text(yaml.safe_dump(_edited(_yaml("tiny-heatmap.yaml"), model_params__common_params__num_kp=10 ** 6)))
    assert _quiet(run.main, ["--mode", "train", "--config", str(path), "--device", "cpu",
                             "--log_dir", str(tmp_path / "log")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model_params.common_params.num_kp: expected at most 256" in line
    assert not (tmp_path / "log").exists()


# ----------------------------------------------------------------------------------------------------------
# The estimator

@pytest.mark.parametrize("name", ["tiny-heatmap.yaml", "tiny-fomm.yaml", "tiny-perturbed.yaml", "tiny-detector.yaml"])
def test_the_meta_parameter_count_is_the_built_models(name):
    config = _quiet(load_config, config_path(name))
    built = _quiet(build_model, config)
    assert parameter_count(config) == sum(p.numel() for p in built.parameters())


def test_activations_grow_with_the_batch_and_the_frame_area_and_training_keeps_more():
    config = _quiet(load_config, config_path("tiny-heatmap.yaml"))
    one = activation_peak(config, 1, False)
    assert one > 64 * 64 * 3 * 4                              # more than one fp32 frame
    assert 3.5 < activation_peak(config, 4, False) / one <= 4.2
    doubled = _quiet(config_from_dict, _edited(config.to_dict(), dataset_params__frame_shape=[128, 128, 3]))
    assert 3.5 < activation_peak(doubled, 1, False) / one <= 4.2
    inference, training = estimate_memory(config), estimate_memory(config, training=True)
    assert training.parameter_bytes == 4 * inference.parameter_bytes == 16 * parameter_count(config)
    assert training.activation_bytes > inference.activation_bytes


def test_the_estimate_leaves_the_random_generators_alone():
    config = _quiet(config_from_dict, _edited(_yaml("tiny-circles.yaml"), dataset_params__frame_shape=[96, 96, 3]))
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    estimate_memory(config, batch=2)
    assert torch.equal(torch.rand(4), expected)


def test_check_memory_bounds_the_parameters_and_can_be_switched_off(monkeypatch):
    # each size within its bound; together 2.4 G parameters in 128 residual blocks of 1024 channels
    data = _edited(_yaml("tiny-heatmap.yaml"), model_params__generator_params__max_features=4096,
                   model_params__generator_params__block_expansion=512,
                   model_params__generator_params__num_bottleneck_blocks=128)
    config = _quiet(config_from_dict, data, "wide.yaml")
    with pytest.raises(ConfigError, match=r"^wide.yaml: model_params: these networks would have 2,4\d\d M "
                                          r"parameters, beyond the bound of 1,000 M"):
        check_memory(config, "wide.yaml")
    monkeypatch.setenv("KPMASK_MEMORY_CHECK", "off")
    assert check_memory(config, "wide.yaml") is None
    monkeypatch.delenv("KPMASK_MEMORY_CHECK")
    monkeypatch.setattr(memory, "available_memory", lambda device=None: (10, "ten bytes"))
    small = _quiet(load_config, config_path("tiny-heatmap.yaml"))
    with pytest.raises(UserError, match=r"needs about 0\.\d\d GiB .* only 0.00 GiB is available \(ten bytes\)"):
        check_memory(small, "tiny-heatmap.yaml", batch=1)


def test_available_memory_reads_the_host():
    available, where = available_memory()
    if available is None:
        pytest.skip(f"nothing says how much memory this host has ({where})")
    assert 0 < available and where


def test_a_containers_page_cache_counts_as_free_less_its_shared_memory(tmp_path):
    """The kernel drops a cgroup's file pages (active ones too) before refusing an allocation, not its shmem:
    a container that has just read a dataset must not look full (cgroup v2 and v1 stat files)."""
    from modules.core.memory import _reclaimable

    v2 = tmp_path / "memory.stat"
    v2.write_text("anon 100\nfile 5000\nactive_file 4000\ninactive_file 1000\nshmem 300\n")
    assert _reclaimable(str(v2)) == 4700
    v1 = tmp_path / "v1.stat"
    v1.write_text("cache 9\ntotal_cache 800\ntotal_inactive_file 100\ntotal_shmem 50\n")
    assert _reclaimable(str(v1)) == 750
    assert _reclaimable(str(tmp_path / "missing")) == 0
