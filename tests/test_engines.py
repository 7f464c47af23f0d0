"""Inference engines: the exported parts compute what PyTorch computes, auto measures once and says what it
chose, and every engine problem is one line."""
from __future__ import annotations

import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, config_path

import run
from modules import engines
from modules.config import load_config
from modules.errors import UserError
from modules.models import build_model

onnxruntime = pytest.importorskip("onnxruntime")
SHIPPED_CIRCLES = os.path.join(ROOT, "models", "tiny-circles.pth.tar")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KPMASK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def random_model(name: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # random detector
        torch.manual_seed(3)
        return build_model(load_config(config_path(name))).eval()


@pytest.mark.parametrize("name", ["tiny-heatmap.yaml", "tiny-circles.yaml"])
def test_exported_parts_animate_within_1e_4_of_pytorch(cache, name):
    config = load_config(config_path(name))
    reference, exported = random_model(name), random_model(name)
    engines.use_onnxruntime(exported, config.record.export_parts(config.model_params), (64, 64), "k-" + name)
    generator = torch.Generator().manual_seed(0)
    source, driving = torch.rand(1, 3, 64, 64, generator=generator), torch.rand(5, 3, 64, 64, generator=generator)
    with torch.inference_mode():
        runs = []
        for model in (reference, exported):
            state = model.encode_source(source)
            absolute = model.animate(state, driving)
            relative = model.animate(state, driving, model.keypoints(driving[:1])) \
                if model.relative_motion_possible else absolute
            runs.append((state.mask, absolute.prediction, absolute.low_res_prediction, relative.prediction))
    for mine, theirs in zip(*runs):
        assert mine.shape == theirs.shape and (mine - theirs).abs().max() < 1e-4
    assert (cache / "onnx" / ("k-" + name) / "generator.onnx").is_file()


def still_pair(tmp_path) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    source = tmp_path / "source.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    frames = tmp_path / "driving"
    frames.mkdir()
    for index in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(frames / f"{index:03d}.png")
    return str(source), str(frames)


def animate(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run.main(["--mode", "animate", "--device", "cpu", *args])


def test_auto_measures_once_says_what_it_chose_and_caches_it(tmp_path, cache, capsys, monkeypatch):
    source, driving = still_pair(tmp_path)
    args = ("--checkpoint", SHIPPED_CIRCLES, "--source_image", source, "--driving_video", driving,
            "--engine", "auto", "--overwrite", "--result_video", str(tmp_path / "out.mp4"))
    assert animate(*args) == 0
    line = next(text for text in capsys.readouterr().out.splitlines() if "engine:" in text)
    line = line[line.index("engine:"):]                        # after "precision: ...; "
    assert "auto, measured on this CPU: torch" in line and "onnxruntime" in line
    with open(cache / "engine-choices.json") as stream:
        (choice,) = json.load(stream).values()
    assert choice["engine"] in ("torch", "onnxruntime") and set(choice["times"]) == {"torch", "onnxruntime"}
    assert line.startswith(f"engine: {choice['engine']} ")
    # the second run reads the choice instead of measuring
    monkeypatch.setattr(engines, "_time_animation", lambda *a, **k: pytest.fail("measured again"))
    assert animate(*args) == 0
    assert f"engine: {choice['engine']} (auto" in capsys.readouterr().out


def test_a_missing_onnxruntime_is_one_line_and_auto_falls_back_to_torch(tmp_path, cache, capsys, monkeypatch):
    source, driving = still_pair(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # import fails as if not installed
    args = ("--checkpoint", SHIPPED_CIRCLES, "--source_image", source, "--driving_video", driving, "--overwrite",
            "--result_video", str(tmp_path / "out.mp4"))
    assert animate(*args, "--engine", "onnxruntime") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "onnxruntime is not installed" in error
    assert animate(*args, "--engine", "auto") == 0
    assert "engine: torch (onnxruntime is not installed)" in capsys.readouterr().out


def test_a_family_that_exports_nothing_runs_on_torch(cache):
    config = load_config(config_path("tiny-perturbed.yaml"))
    assert config.record.export_parts(config.model_params) == ()
    model = random_model("tiny-perturbed.yaml")
    _, name, line = engines.choose_engine(lambda: model, (), (64, 64), SHIPPED_CIRCLES, "auto",
                                          torch.device("cpu"), None)
    assert name == "torch" and "exports no parts" in line
    with pytest.raises(UserError, match="--engine onnxruntime: this model family exports no parts"):
        engines.choose_engine(lambda: model, (), (64, 64), SHIPPED_CIRCLES, "onnxruntime", torch.device("cpu"), None)


def test_a_damaged_cached_graph_is_exported_again(cache):
    config = load_config(config_path("tiny-heatmap.yaml"))
    parts = config.record.export_parts(config.model_params)
    engines.use_onnxruntime(random_model("tiny-heatmap.yaml"), parts, (64, 64), "damaged")
    graph = cache / "onnx" / "damaged" / "generator.onnx"
    graph.write_bytes(b"not a graph")
    model = random_model("tiny-heatmap.yaml")
    engines.use_onnxruntime(model, parts, (64, 64), "damaged")
    assert graph.stat().st_size > 1000
    with torch.inference_mode():
        state = model.encode_source(torch.rand(1, 3, 64, 64))
        assert model.animate(state, torch.rand(2, 3, 64, 64)).prediction.shape == (2, 3, 64, 64)


@pytest.mark.parametrize("flags, expected", [("fpu avx2 amx_bf16 avx512f", "bf16"), ("fpu avx2 avx512_bf16", "bf16"),
                                             ("fpu sse4_2 avx2 fma", "no")])
def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(tmp_path, monkeypatch, flags, expected):
    from modules import precision

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision, "CPUINFO", str(cpuinfo))
    monkeypatch.delenv("KPMASK_PRECISION", raising=False)
    chosen, line = precision.inference_precision(None, torch.device("cpu"))
    assert chosen == expected
    assert line.startswith("precision: bf16 (auto: this CPU has") if expected == "bf16" else \
        "precision: fp32 (auto: no native bf16" in line
    assert precision.inference_precision("no", torch.device("cpu"))[0] == "no"       # an explicit choice stays


def test_auto_precision_is_refused_for_training(capsys):
    assert run.main(["--mode", "train", "--config", config_path("tiny-heatmap.yaml"), "--mixed_precision",
                     "auto"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--mixed_precision auto is for reconstruction and animate" in error
