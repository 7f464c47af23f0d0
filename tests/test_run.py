"""The command line: inspect mode on tiny configs, FOMM checkpoints, and one-line errors with exit 2."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, config_path, save_fomm_checkpoint

from modules.config.loading import load_config
from modules.nets.keypoint_detector import KPDetector


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_inspect_prints_parameters_shapes_and_timings():
    result = run("--config", config_path("tiny-heatmap.yaml"), "--mode", "inspect", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert re.search(r"shape      prediction +\(1, 3, 64, 64\)", result.stdout)
    assert re.search(r"shape      driving_mask +\(1, 1, 32, 32\)", result.stdout)
    assert "params     generator.high_res" in result.stdout and "time       forward+backward" in result.stdout
    # random weights must be said loudly
    assert "VGG-19 has RANDOM weights" in result.stderr and "detector has RANDOM weights" in result.stderr


def test_inspect_with_a_fomm_checkpoint(tmp_path):
    config = load_config(config_path("tiny-circles.yaml"))
    path = save_fomm_checkpoint(str(tmp_path / "tiny-cpk.pth.tar"),
                                KPDetector(**config.model_params.detector_kwargs()).state_dict())
    result = run("--config", config_path("tiny-circles.yaml"), "--mode", "inspect", "--checkpoint_with_kp", path)
    assert result.returncode == 0, result.stderr
    assert f"detector   {path}" in result.stdout
    assert "detector has RANDOM weights" not in result.stderr


def _assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_bad_config_value_exits_2_with_one_line(tmp_path):
    with open(config_path("tiny-heatmap.yaml")) as stream:
        data = yaml.safe_load(stream)
    data["model_params"]["generator_params"]["num_bottleneck_blocks"] = "six"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    _assert_one_line_error(run("--config", str(path)), str(path),
                           "model_params.generator_params.num_bottleneck_blocks", "an integer")


def test_mismatched_checkpoint_exits_2_with_the_settings_to_use(tmp_path):
    path = save_fomm_checkpoint(str(tmp_path / "other.pth.tar"),
                                KPDetector(block_expansion=8, num_kp=6, num_channels=3, max_features=64,
                                           num_blocks=3, temperature=0.1, estimate_jacobian=True,
                                           scale_factor=0.25).state_dict())
    _assert_one_line_error(run("--config", config_path("tiny-heatmap.yaml"), "--checkpoint_with_kp", path),
                           "other.pth.tar", "num_kp=6")


@pytest.mark.parametrize("args, fragment", [
    (["--config", "no/such.yaml"], "no/such.yaml: config file not found"),
    (["--config", config_path("tiny-heatmap.yaml"), "--checkpoint_with_kp", "missing.pth.tar"],
     "missing.pth.tar: checkpoint file not found"),
    (["--config", config_path("tiny-heatmap.yaml"), "--vgg_weights", "nowhere.pth"], "nowhere.pth: no such file"),
])
def test_missing_files_exit_2(args, fragment):
    _assert_one_line_error(run(*args), fragment)


def test_unsupported_device_is_a_clear_error():
    _assert_one_line_error(run("--config", config_path("tiny-heatmap.yaml"), "--device", "meta"),
                           "--device 'meta': expected auto, cpu, cuda or cuda:N")


def test_cuda_request_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _assert_one_line_error(run("--config", config_path("tiny-heatmap.yaml"), "--device", "cuda"),
                           "CUDA is not available")
