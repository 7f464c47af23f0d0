"""The contract every registered model family keeps, run over each shipped tiny config (one or more per
family): it trains through run.py, its checkpoint holds the record's networks and loads strictly, a run
stopped mid-way and resumed ends bit-identical to a straight one, and, where the family has a generator, it
reconstructs and animates (relatively too where its record allows)."""
from __future__ import annotations

import glob
import json
import os
import warnings

import pytest
import torch
import yaml
from conftest import ROOT, write_tiny

import run
from modules.config.family import registered
from modules.config.loading import config_from_dict
from modules.core.files import read_checkpoint
from modules.families.build import build_trainable, model_from_checkpoint

TINY_CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "config", "tiny-*.yaml")))


def family_of_config(name: str) -> str:
    with open(os.path.join(ROOT, "config", name)) as stream:
        return yaml.safe_load(stream)["model_params"].get("family", "keypoint_mask")


def kpmask(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # random VGG / random detector warnings
        return run.main([*args, "--device", "cpu"])


def only(pattern: str) -> str:
    (path,) = glob.glob(pattern)
    return path


def test_every_registered_family_has_a_tiny_config():
    assert set(registered()) <= {family_of_config(name) for name in TINY_CONFIGS}


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_the_family_contract(tmp_path, dataset_root, name):
    record = registered()[family_of_config(name)]
    config_file = write_tiny(tmp_path, name, dataset_root, num_epochs=2)       # 2 epochs of 4 steps
    # Straight to step 6, and stopped at step 3 then resumed (across the epoch boundary at step 4).
    assert kpmask("--mode", "train", "--config", config_file, "--max_steps", "6",
                  "--log_dir", str(tmp_path / "straight")) == 0
    assert kpmask("--mode", "train", "--config", config_file, "--max_steps", "3",
                  "--log_dir", str(tmp_path / "split")) == 0
    split_dir = only(str(tmp_path / "split" / "*"))
    assert kpmask("--mode", "train", "--checkpoint", split_dir, "--max_steps", "6") == 0
    straight_path = only(str(tmp_path / "straight" / "*" / "00000001-*"))
    straight, resumed = read_checkpoint(straight_path), read_checkpoint(only(os.path.join(split_dir, "00000001-*")))
    assert straight["step"] == resumed["step"] == 6
    for network in record.networks:
        assert straight[network].keys() == resumed[network].keys()
        for key, value in straight[network].items():
            assert torch.equal(value, resumed[network][key]), (network, key)
    assert torch.equal(straight["rng"]["torch"], resumed["rng"]["torch"])

    # The checkpoint holds the record's networks and loads strictly into the family's model.
    config = config_from_dict(straight["config"], straight_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        networks = build_trainable(config, model_from_checkpoint(config, straight, straight_path)).networks()
    assert set(networks) == set(record.networks)
    for network, module in networks.items():
        state = module.state_dict()
        assert state.keys() == straight[network].keys()
        assert all(torch.equal(state[k], straight[network][k]) for k in state), network
    if not record.animates:
        assert kpmask("--mode", "reconstruction", "--checkpoint", straight_path) == 2
        return

    run_dir = os.path.dirname(straight_path)
    assert kpmask("--mode", "reconstruction", "--checkpoint", straight_path) == 0
    assert kpmask("--mode", "animate", "--checkpoint", straight_path) == 0
    for mode in ("reconstruction", "animation"):
        with open(os.path.join(run_dir, mode, "metrics.json")) as stream:
            metrics = json.load(stream)
        assert 0 < metrics["mean"]["l1"] < 1 and -1 < metrics["mean"]["ssim"] <= 1
        assert glob.glob(os.path.join(run_dir, mode, "*.mp4")) and glob.glob(os.path.join(run_dir, mode, "png", "*"))
    with open(os.path.join(run_dir, "animation", "metrics.json")) as stream:
        protocol = json.load(stream)["protocol"]
    relative = record.relative_motion(config.model_params)
    assert protocol["motion"] == ("relative" if relative and
                                  config.animate_params.normalization_params.use_relative_movement else "absolute")
    if relative:                                  # and absolutely on request
        assert kpmask("--mode", "animate", "--checkpoint", straight_path, "--motion", "absolute") == 0
        with open(os.path.join(run_dir, "animation", "metrics.json")) as stream:
            assert json.load(stream)["protocol"]["motion"] == "absolute"
    else:
        assert kpmask("--mode", "animate", "--checkpoint", straight_path, "--motion", "relative") == 2
