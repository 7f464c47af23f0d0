"""Inference engines: the rewrites and the exported parts compute what PyTorch computes, auto measures once
and says what it chose, int8 says its PSNR, and every engine problem is one line."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import warnings
from typing import NamedTuple, Optional

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import ROOT, config_path
from PIL import Image
from torch import nn

import run
from modules.config.loading import load_config
from modules.core.errors import UserError
from modules.families.build import build_model
from modules.inference import choice, engines
from modules.inference.optimize import optimize_for_inference
from modules.nets.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d

onnxruntime = pytest.importorskip("onnxruntime")
SHIPPED_CIRCLES = os.path.join(ROOT, "models", "tiny-circles.pth.tar")
CONFIGS = ["tiny-heatmap.yaml", "tiny-circles.yaml", "tiny-fomm.yaml", "tiny-perturbed.yaml"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KPMASK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@torch.no_grad()
def randomise_statistics(model: nn.Module, seed: int = 5) -> nn.Module:
    """BatchNorm statistics and affine maps away from (0, 1), and the generators' last convolutions away from
    their copy-the-source start, so that every folded and rewritten layer changes the output."""
    generator = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -0.3, 0.3), (module.running_var, 0.5, 2.0),
                                      (module.weight, 0.5, 1.5), (module.bias, -0.3, 0.3)):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)
        elif isinstance(module, nn.Conv2d) and name.endswith("final"):
            module.weight.add_(0.05 * torch.randn(module.weight.shape, generator=generator))
    return model


def random_model(name: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # random detector
        torch.manual_seed(3)
        return randomise_statistics(build_model(load_config(config_path(name))).eval())


@pytest.mark.parametrize("block", [UpBlock2d(6, 5), SameBlock2d(6, 5), DownBlock2d(6, 5), ResBlock2d(6),
                                   SameBlock2d(6, 5, kernel_size=7, padding=3)], ids=lambda b: type(b).__name__)
def test_each_rewritten_block_computes_what_the_block_computes(block):
    block = randomise_statistics(nn.Sequential(block)).eval()
    fast = optimize_for_inference(block)
    assert type(fast[0]) is not type(block[0])                  # rewritten, and the original kept as it was
    x = torch.rand(3, 6, 6, 10)                                 # odd sizes after the up block's halving, batch 3
    with torch.no_grad():
        expected = block(x)
        assert (fast(x) - expected).abs().max() < 1e-5
        assert (fast(x.contiguous(memory_format=torch.channels_last)) - expected).abs().max() < 1e-5


def test_the_sub_pixel_up_block_does_4_9_of_the_multiplications():
    up = optimize_for_inference(nn.Sequential(UpBlock2d(16, 8)).eval())[0]
    low_res_taps = up.conv.weight.numel() / 4                  # per output pixel: (C_out, C_in, 2, 2) per phase
    assert low_res_taps / (8 * 16 * 9) == pytest.approx(4 / 9)


def test_rewriting_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        optimize_for_inference(nn.Sequential(UpBlock2d(4, 4)))


def _animate(model, source, driving):
    with torch.inference_mode():
        state = model.encode_source(source)
        out = model.animate(state, driving)
        relative = model.animate(state, driving, model.keypoints(driving[:1])) \
            if getattr(model, "relative_motion_possible", True) and not hasattr(model, "refinement") else out
    return out.prediction, out.low_res_prediction if hasattr(out, "low_res_prediction") else out.prediction, \
        relative.prediction


def check_parity(name: str, engine: str, cache: str) -> None:
    config = load_config(config_path(name))
    reference = random_model(name)
    fast = engines.prepare(random_model(name), engine, config.record.export_parts(config.model_params), (64, 64),
                           "a" * 64)
    generator = torch.Generator().manual_seed(0)
    source, driving = torch.rand(1, 3, 64, 64, generator=generator), torch.rand(5, 3, 64, 64, generator=generator)
    for mine, theirs in zip(_animate(fast, source, driving), _animate(reference, source, driving)):
        assert mine.shape == theirs.shape and (mine - theirs).abs().max() < 1e-4
    assert (mine - source).abs().mean() > 1e-3                 # not a copy of the source: the test can fail
    if engine != "torch-opt":
        graphs = sorted(os.path.basename(path) for path in glob.glob(os.path.join(cache, "onnx", "*", "*.onnx")))
        assert graphs == sorted(spec.path + ".onnx" for spec in config.record.export_parts(config.model_params))
        import onnx

        for graph in glob.glob(os.path.join(cache, "onnx", "*", "*.onnx")):     # the trace named the outputs
            with open(graph[:-len(".onnx")] + ".json", encoding="utf-8") as stream:
                meta = json.load(stream)
            outputs = onnx.load(graph, load_external_data=False).graph.output
            assert [output.name for output in outputs] == meta["tensors"]
            assert all(output.type.tensor_type.shape.dim[0].dim_param == "batch" for output in outputs)


def in_subprocess(code: str, cache) -> subprocess.CompletedProcess:
    """OpenVINO runs in a child process: in the process that loaded it, later forked DataLoader workers
    (tests/test_frames_dataset.py) crashed."""
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{os.path.join(ROOT, 'tests')!r}, "
                           f"{ROOT!r}]\n" + code], capture_output=True, text=True,
                          env=dict(os.environ, KPMASK_CACHE=str(cache), PYTHONWARNINGS="ignore"))


@pytest.mark.parametrize("engine", ["torch-opt", "onnxruntime", "openvino"])
@pytest.mark.parametrize("name", CONFIGS)
def test_every_engine_animates_within_1e_4_of_pytorch(cache, name, engine):
    if engine != "openvino":
        check_parity(name, engine, str(cache))
        return
    result = in_subprocess(f"import test_engines; test_engines.check_parity({name!r}, 'openvino', {str(cache)!r})",
                           cache)
    if "No module named 'openvino'" in result.stderr:
        pytest.skip("openvino is not installed")
    assert result.returncode == 0, result.stderr[-2000:]


def still_pair(tmp_path, count: int = 3) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    source = tmp_path / "source.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(source)
    frames = tmp_path / "driving"
    frames.mkdir()
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(frames / f"{index:03d}.png")
    return str(source), str(frames)


def animate(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run.main(["--mode", "animate", "--device", "cpu", *args])


def engine_line(output: str) -> str:
    line = next(text for text in output.splitlines() if "engine:" in text and "measuring" not in text)
    return line[line.index("engine:"):]                        # after "precision: ...; "


def test_auto_races_on_the_first_frames_says_what_it_chose_and_caches_it(tmp_path, cache):
    source, driving = still_pair(tmp_path, count=30)
    command = (f"import run; sys.exit(run.main(['--mode', 'animate', '--device', 'cpu', '--checkpoint', "
               f"{SHIPPED_CIRCLES!r}, '--source_image', {source!r}, '--driving_video', {driving!r}, '--engine', "
               f"'{{engine}}', '--overwrite', '--result_video', {{out!r}}]))")
    first = in_subprocess(command.format(engine="auto", out=str(tmp_path / "auto.mp4")), cache)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "onnxruntime, torch-opt on the first frames" in first.stdout           # eager torch races on a GPU
    assert "engine: auto, racing openvino, onnxruntime" in first.stdout or "racing onnxruntime" in first.stdout
    with open(cache / "engine-choices.json") as stream:
        (choice,) = json.load(stream).values()
    times = {tuple(candidate): seconds for candidate, seconds in choice["times"]}
    expected = {"torch-opt", "onnxruntime"} | ({"openvino"} if "openvino" in first.stdout else set())
    assert {engine for engine, _ in times} == expected and tuple(choice["chosen"]) == min(times, key=times.get)
    chosen = choice["chosen"][0]
    assert f"engine: {chosen} (auto, ms/frame measured on this run's first frames, 2 per turn: " in \
        first.stdout + first.stderr
    # every frame is there, in order: the race's frames are the result's, as close to eager fp32 as any engine
    torch_run = in_subprocess(command.format(engine="torch", out=str(tmp_path / "torch.mp4")), cache)
    assert torch_run.returncode == 0, torch_run.stderr[-2000:]
    raced, eager = (np.stack(list(iio.imiter(tmp_path / name))).astype(float) for name in ("auto.mp4", "torch.mp4"))
    assert raced.shape == eager.shape == (30, 64, 64, 3) and np.abs(raced - eager).mean() < 1.0
    # the second run reads the choice and prepares the winner alone
    second = in_subprocess(command.format(engine="auto", out=str(tmp_path / "again.mp4")), cache)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "racing" not in second.stdout
    assert engine_line(second.stdout).startswith(f"engine: {chosen} (auto, ms/frame measured on this CPU before; "
                                                 f"cached: ")


def test_the_race_gives_every_frame_in_order_skips_the_clearly_slower_and_keeps_the_fastest(monkeypatch):
    """Scripted candidates on a fake clock: each one's frames carry its number, each costs its seconds per
    frame; the race's output is every frame in order, and after the race the fastest animates alone."""
    from modules.inference import choice

    clock = [0.0]
    monkeypatch.setattr(choice.time, "perf_counter", lambda: clock[0])
    cost = {"torch": 3.0, "torch-opt": 1.0, "openvino": 1.2}

    sizes = []                                      # the batch size of every call a candidate gets

    class Scripted:
        def __init__(self, name):
            self.name = name

        def animate(self, state, driving):
            sizes.append(len(driving))
            clock[0] += cost[self.name] * len(driving)
            return Output(driving * 0 + list(cost).index(self.name), None)

    class Output(NamedTuple):
        prediction: torch.Tensor
        unused: Optional[torch.Tensor]

    entrants = [choice.Candidate(name, "no") for name in cost]
    heard = {}
    race = choice.EngineRace(entrants, lambda c: Scripted(c.engine), torch.device("cpu"),
                             lambda times, winner, model: heard.update(times) or "chosen")
    frames = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 1, 2, 2)
    out = torch.cat([race.animate(None, frames[i:i + 8]).prediction for i in range(0, 20, 8)])
    who = out[:, 0, 0, 0].tolist()
    # torch: warm + one timed turn (3x the best so far is not "clearly slower" before anyone else ran), then
    # a second; torch-opt three turns; openvino warm + timed, within 1.25x of the best: a second turn too
    assert who[:6] == [0] * 6 and who[6:12] == [1] * 6 and who[12:18] == [2] * 6 and who[18:] == [1] * 2
    assert heard == pytest.approx({entrants[0]: 3.0, entrants[1]: 1.0, entrants[2]: 1.2}) and race.winner == entrants[1]
    assert list(race.models) == [entrants[1]]                                    # the others are freed
    slow = choice.EngineRace([choice.Candidate("torch-opt", "no"), choice.Candidate("torch", "no")],
                             lambda c: Scripted(c.engine), torch.device("cpu"),
                             lambda times, winner, model: "chosen")
    sizes.clear()
    slow.animate(None, frames[:16])
    assert slow.winner == ("torch-opt", "no") and len(slow.times[("torch", "no")]) == 1   # no second turn
    # the 6 frames left of the batch the race ended in go 2 at a time (a batch size the winner has compiled);
    # the next batch goes whole
    slow.animate(None, frames[:8])
    assert sizes == [2] * 5 + [2, 2, 2] + [8]


def test_a_missing_engine_is_one_line_and_auto_leaves_it_out(tmp_path, cache, capsys, monkeypatch):
    source, driving = still_pair(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # import fails as if not installed
    monkeypatch.setitem(sys.modules, "openvino", None)
    args = ("--checkpoint", SHIPPED_CIRCLES, "--source_image", source, "--driving_video", driving, "--overwrite",
            "--result_video", str(tmp_path / "out.mp4"))
    assert animate(*args, "--engine", "onnxruntime") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "onnxruntime is not installed (pip install onnxruntime==" in error
    assert animate(*args, "--engine", "auto") == 0
    assert engine_line(capsys.readouterr().out).startswith("engine: torch-opt (auto: the only candidate here)")
    assert animate(*args, "--engine", "auto", "--mixed_precision", "int8") == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "int8 needs onnxruntime or openvino" in error


def test_a_family_that_exports_nothing_runs_on_pytorch(cache):
    model = random_model("tiny-heatmap.yaml")
    chosen = choice.choose_engine(lambda: model, (), (64, 64), SHIPPED_CIRCLES, "torch", torch.device("cpu"), "no")
    assert chosen.candidate == ("torch", "no") and chosen.line == "engine: torch (eager)"
    assert choice.candidates("auto", (), torch.device("cpu"), "no") == [("torch-opt", "no")]
    assert choice.candidates("auto", (), torch.device("cuda"), "no") == [("torch-opt", "no"), ("torch", "no")]
    with pytest.raises(UserError, match="--engine onnxruntime: this model family exports no parts"):
        choice.choose_engine(lambda: model, (), (64, 64), SHIPPED_CIRCLES, "onnxruntime", torch.device("cpu"), "no")
    with pytest.raises(UserError, match="--engine onnxruntime with --mixed_precision bf16: it runs fp32 or int8"):
        choice.candidates("onnxruntime", ("part",), torch.device("cpu"), "bf16")
    with pytest.raises(UserError, match="int8 runs on the exported engines"):
        choice.candidates("torch-opt", ("part",), torch.device("cpu"), "int8")


def test_a_damaged_cached_graph_is_exported_again(cache):
    config = load_config(config_path("tiny-heatmap.yaml"))
    parts = config.record.export_parts(config.model_params)
    engines.use_exported(random_model("tiny-heatmap.yaml"), parts, (64, 64), "d" * 64, "onnxruntime")
    (graph,) = (cache / "onnx").glob("*/generator.onnx")
    graph.write_bytes(b"not a graph")
    model = random_model("tiny-heatmap.yaml")
    with pytest.warns(UserWarning, match="or damaged.*exported again"):
        engines.use_exported(model, parts, (64, 64), "d" * 64, "onnxruntime")
    assert graph.stat().st_size > 1000
    with torch.inference_mode():
        state = model.encode_source(torch.rand(1, 3, 64, 64))
        assert model.animate(state, torch.rand(2, 3, 64, 64)).prediction.shape == (2, 3, 64, 64)


def test_a_graph_of_another_model_file_is_refused_in_one_line(tmp_path, cache, capsys):
    source, driving = still_pair(tmp_path)
    args = ("--checkpoint", SHIPPED_CIRCLES, "--source_image", source, "--driving_video", driving, "--overwrite",
            "--result_video", str(tmp_path / "out.mp4"), "--engine", "onnxruntime")
    assert animate(*args) == 0
    (meta,) = (cache / "onnx").glob("*/generator.json")
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"model_sha256": "f" * 64}))
    capsys.readouterr()
    assert animate(*args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "generator.onnx: exported from another model file" in error


def test_int8_says_its_psnr_against_fp32_and_quantises_once_per_calibration(tmp_path, cache, capsys, monkeypatch):
    source, driving = still_pair(tmp_path)
    args = ("--checkpoint", SHIPPED_CIRCLES, "--source_image", source, "--driving_video", driving, "--overwrite",
            "--result_video", str(tmp_path / "out.mp4"), "--engine", "onnxruntime", "--mixed_precision", "int8")
    assert animate(*args) == 0
    line = engine_line(capsys.readouterr().out)
    psnr = float(line.split("int8: PSNR ")[1].split(" dB")[0])
    assert 25 < psnr < 200 and "against fp32 on the 3 calibration frames" in line    # quantised, and close
    assert len(list((cache / "onnx").glob("*/generator.int8-*.onnx"))) == 1
    assert not list((cache / "onnx").glob("*/mask.detector.int8-*"))                  # the detector stays fp32
    import onnxruntime.quantization as quantization
    monkeypatch.setattr(quantization, "quantize_static", lambda *a, **k: pytest.fail("quantised again"))
    assert animate(*args) == 0
    assert animate(*args[:-4], "--engine", "torch", "--mixed_precision", "int8") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--engine torch with --mixed_precision int8: int8 runs on the exported engines" in error


def test_calibration_stops_before_the_generator_and_its_reference_is_the_fp32_graph(tmp_path):
    """int8's capture records the generator's inputs without running it; calibrating runs the fp32 graph once
    per sample, and its outputs are the reference for the int8 PSNR: the fp32 graph's and eager PyTorch's."""
    from modules.inference.engines import capture_inputs, quantize_graph, run_graph
    from modules.inference.export import exported_graph, graph_stamp

    config = load_config(config_path("tiny-heatmap.yaml"))
    parts = config.record.export_parts(config.model_params)
    model = random_model("tiny-heatmap.yaml")
    generator = torch.Generator().manual_seed(1)
    source, driving = torch.rand(1, 3, 64, 64, generator=generator), torch.rand(3, 3, 64, 64, generator=generator)
    calls = []
    hook = model.generator.register_forward_hook(lambda *args: calls.append(1))
    samples = capture_inputs(model, parts, source, driving)
    assert calls == [] and list(samples) == ["generator"] and len(samples["generator"]) == 3
    assert "forward" not in vars(model.generator)                                  # its own forward again
    hook.remove()
    graph, meta = exported_graph(model, parts[1], (64, 64), str(tmp_path), "c" * 64)
    quantized = str(tmp_path / "generator.int8.onnx")
    reference = quantize_graph(graph, samples["generator"], quantized, stamp=f"{'c' * 64} 64x64")
    assert sorted(reference) == sorted(meta["tensors"]) and graph_stamp(quantized) == f"{'c' * 64} 64x64"
    assert not [name for name in os.listdir(tmp_path) if name.startswith("quantizing-")]   # its work folder gone
    fp32 = run_graph(graph, samples["generator"])
    assert np.abs(reference["prediction"] - fp32["prediction"]).max() < 1e-5
    with torch.inference_mode():
        eager = _animate(model, source, driving)[0]
    assert np.abs(reference["prediction"] - eager.numpy()).max() < 1e-4
    int8 = run_graph(quantized, samples["generator"])["prediction"]
    error = float(((int8 - reference["prediction"]) ** 2).mean())
    assert 0 < error < 10 ** -2.5                                # quantised (not a copy), and within 25 dB


def test_int8_leaves_fp32_a_part_the_calibration_never_reaches(cache):
    """Perturbed masks without r (ablation no_ref): r is exported but never called, so it has no calibration
    samples; it stays fp32, the generator is quantised, and the PSNR is measured end to end."""
    config = load_config(config_path("tiny-perturbed.yaml"))
    parts = config.record.export_parts(config.model_params)
    model = random_model("tiny-perturbed.yaml")
    model.ablation = "no_ref"
    generator = torch.Generator().manual_seed(2)
    source, driving = torch.rand(1, 3, 64, 64, generator=generator), torch.rand(2, 3, 64, 64, generator=generator)
    chosen = choice.choose_engine(lambda: model, parts, (64, 64), SHIPPED_CIRCLES, "onnxruntime",
                                  torch.device("cpu"), "int8", lambda size: (source, driving))
    quantised = sorted(path.name.split(".int8-")[0] for path in cache.glob("onnx/*/*.int8-*.onnx"))
    assert quantised == ["generator"]
    psnr = float(chosen.line.split("int8: PSNR ")[1].split(" dB")[0])
    assert 20 < psnr < 200


def test_export_script_writes_graphs_that_match_pytorch(tmp_path):
    out = tmp_path / "graphs"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_onnx.py"), SHIPPED_CIRCLES,
                             "--out", str(out)], capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(out)) == ["generator.json", "generator.onnx", "mask.detector.json", "mask.detector.onnx"]
    errors = [float(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines() if "max |onnxruntime - torch|" in line]
    assert len(errors) == 2 and max(errors) < 1e-4
    meta = json.loads((out / "generator.json").read_text())
    assert meta["inputs"] == ["source", "source_mask", "driving_mask"] and meta["size"] == [64, 64]
    again = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_onnx.py"), SHIPPED_CIRCLES,
                            "--out", str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "folder is not empty; give --overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, expected", [("fpu avx2 amx_bf16 avx512f", "bf16"), ("fpu avx2 avx512_bf16", "bf16"),
                                             ("fpu sse4_2 avx2 fma", "no")])
def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(tmp_path, monkeypatch, flags, expected):
    from modules.core import precision

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision, "CPUINFO", str(cpuinfo))
    monkeypatch.delenv("KPMASK_PRECISION", raising=False)
    chosen, line = precision.inference_precision(None, torch.device("cpu"))
    assert chosen == "auto"                                     # chosen with the engine, among what is native
    assert line.startswith("precision: auto (fp32 or bf16, with the engine: this CPU has") if expected == "bf16" \
        else "precision: fp32 (auto: no native bf16" in line
    assert precision.inference_precision("no", torch.device("cpu"))[0] == "no"       # an explicit choice stays
    labels = [c.label for c in choice.candidates("auto", ("part",), torch.device("cpu"), "auto")]
    assert ("torch-opt bf16" in labels) == (expected == "bf16") and "onnxruntime bf16" not in labels
    assert labels[-1] == "torch-opt" and "torch" not in labels and labels[0].endswith(" bf16") == (expected == "bf16")
    assert "torch int8" not in labels                                                 # int8 only when asked


def test_auto_precision_is_refused_for_training(capsys):
    assert run.main(["--mode", "train", "--config", config_path("tiny-heatmap.yaml"), "--mixed_precision",
                     "auto"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--mixed_precision auto is for reconstruction and animate" in error
    assert run.main(["--mode", "train", "--config", config_path("tiny-heatmap.yaml"), "--mixed_precision",
                     "int8"]) == 2
    assert "--mixed_precision int8 is for reconstruction and animate" in capsys.readouterr().err


def test_prepare_engine_races_ahead_of_time_so_the_first_run_starts_on_the_winner(tmp_path, cache):
    prepare = [sys.executable, os.path.join(ROOT, "scripts", "prepare_engine.py"), SHIPPED_CIRCLES]
    env = dict(os.environ, KPMASK_CACHE=str(cache), PYTHONWARNINGS="ignore")
    done = subprocess.run(prepare, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch-opt on the first frames" in done.stdout
    (choice,) = json.loads((cache / "engine-choices.json").read_text()).values()
    winner = choice["chosen"][0]
    assert f"engine: {winner} (auto, ms/frame measured on this run's first frames" in done.stdout + done.stderr
    source, driving = still_pair(tmp_path)
    command = (f"import run; sys.exit(run.main(['--mode', 'animate', '--device', 'cpu', '--checkpoint', "
               f"{SHIPPED_CIRCLES!r}, '--source_image', {source!r}, '--driving_video', {driving!r}, '--overwrite', "
               f"'--engine', 'auto', '--mixed_precision', 'auto', '--result_video', {str(tmp_path / 'out.mp4')!r}]))")
    run_after = in_subprocess(command, cache)
    assert run_after.returncode == 0, run_after.stderr[-2000:]
    assert "racing" not in run_after.stdout and f"engine: {winner} (auto, ms/frame measured on this CPU before" \
        in run_after.stdout
    missing = subprocess.run([*prepare, "--video", str(tmp_path / "nowhere.mp4")], capture_output=True, text=True,
                             env=env)
    error = missing.stderr.strip()
    assert missing.returncode == 2 and len(error.splitlines()) == 1 and error.startswith("error: --video ") \
        and error.endswith("nowhere.mp4: file not found")


def test_a_cached_graph_of_another_model_is_never_run_but_exported_again(cache):
    """The JSON beside a graph can be copied with it: the graph's own stamp (the model file's hash and frame
    size in its metadata) decides, and a graph that lacks this model's stamp is exported again."""
    from modules.inference.export import STAMP, graph_stamp

    config = load_config(config_path("tiny-heatmap.yaml"))
    parts = config.record.export_parts(config.model_params)
    other = random_model("tiny-heatmap.yaml")
    with torch.no_grad():
        for parameter in other.generator.parameters():
            parameter.add_(0.1)
    engines.use_exported(other, parts, (64, 64), "e" * 64, "onnxruntime")            # another model's graphs
    mine = random_model("tiny-heatmap.yaml")
    engines.use_exported(random_model("tiny-heatmap.yaml"), parts, (64, 64), "d" * 64, "onnxruntime")
    (foreign,) = (cache / "onnx").glob("eeee*/generator.onnx")
    (placed,) = (cache / "onnx").glob("dddd*/generator.onnx")
    placed.write_bytes(foreign.read_bytes())                     # put in this model's place, its JSON kept
    assert graph_stamp(str(placed)).startswith("e" * 64)
    with pytest.warns(UserWarning, match="not stamped with this model file.s hash"):
        engines.use_exported(mine, parts, (64, 64), "d" * 64, "onnxruntime")
    assert graph_stamp(str(placed)) == f"{'d' * 64} 64x64" and STAMP == "kpmask.model"
    reference = random_model("tiny-heatmap.yaml")
    source, driving = torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64)
    for got, expected in zip(_animate(mine, source, driving), _animate(reference, source, driving)):
        assert (got - expected).abs().max() < 1e-4                 # this model's frames, not the other's


def test_an_unwritable_cache_works_in_a_temporary_folder_with_one_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    source, driving = still_pair(tmp_path)
    out = tmp_path / "out.mp4"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "--mode", "animate", "--device", "cpu",
                           "--checkpoint", SHIPPED_CIRCLES, "--source_image", source, "--driving_video", driving,
                           "--result_video", str(out), "--engine", "onnxruntime"], capture_output=True, text=True,
                          env=dict(os.environ, KPMASK_CACHE=str(blocker / "cache")))    # below a file: impossible
    assert done.returncode == 0, done.stderr[-1500:]
    warned = [line for line in done.stderr.splitlines() if "the engine cache cannot be written" in line]
    assert len(warned) == 1 and warned[0].startswith("WARNING: ") and "Traceback" not in done.stderr
    assert out.is_file() and not (blocker / "cache").exists()
