"""The demo path: shipped models, model files, `scripts/demo.py` against the README, reproducible training."""
from __future__ import annotations

import glob
import os
import re
import warnings

import numpy as np
import pytest
import torch
from conftest import ROOT, write_tiny

import run
from modules.config.formats import MODEL_FORMAT, MODEL_KEYS, load_training_checkpoint
from modules.core.errors import CheckpointError, UserError
from modules.core.files import latest_checkpoint, read_checkpoint
from modules.inference.loading import load_model

MODELS = os.path.join(ROOT, "models")
SHIPPED_FOMM = os.path.join(MODELS, "tiny-fomm.pth.tar")
SHIPPED_DETECTOR = os.path.join(MODELS, "tiny-detector.pth.tar")
SHIPPED_HEATMAP = os.path.join(MODELS, "tiny-heatmap.pth.tar")
SHIPPED_CIRCLES = os.path.join(MODELS, "tiny-circles.pth.tar")
CPU = torch.device("cpu")


def quiet_run(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # random VGG / random detector warnings
        return run.main([*args, "--device", "cpu"])


def small_config(folder, dataset_root, name: str, **train_params) -> str:
    """A shipped config on the small test dataset, a few steps long."""
    return write_tiny(folder, name, dataset_root, **{"epoch_milestones": [1], **train_params})


def latest(log_dir) -> dict:
    (run_dir,) = glob.glob(os.path.join(str(log_dir), "*"))
    return read_checkpoint(latest_checkpoint(run_dir))


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------- shipped models

def test_shipped_models_load_strictly_and_share_one_detector():
    fomm_config, fomm, fomm_file = load_model(SHIPPED_FOMM, CPU)
    heatmap_config, heatmap, heatmap_file = load_model(SHIPPED_HEATMAP, CPU)
    circles_config, circles, circles_file = load_model(SHIPPED_CIRCLES, CPU)
    detector_file = read_checkpoint(SHIPPED_DETECTOR)
    assert fomm_config.family == "fomm" and heatmap_config.family == circles_config.family == "keypoint_mask"
    assert (heatmap_config.model_params.mask_params.kind, circles_config.model_params.mask_params.kind) == \
        ("heatmap", "circles")
    assert detector_file["config"]["model_params"]["family"] == "detector"
    assert not {"heatmap", "circles"} & set(os.path.basename(SHIPPED_DETECTOR).split("-"))
    for file in (fomm_file, heatmap_file, circles_file, detector_file):
        assert file["format"] == MODEL_FORMAT and file["provenance"]["training_time"]
        assert os.path.getsize(SHIPPED_DETECTOR if file is detector_file else file["path"]) < 4 * 2 ** 20
    # stage two read the labelled stage one's detector and kept it frozen: the three hold the same weights
    assert_identical(detector_file["kp_detector"], heatmap.mask.detector.state_dict())
    assert_identical(detector_file["kp_detector"], circles.mask.detector.state_dict())
    frames = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        for model in (heatmap, circles, fomm):
            output = model.animate(model.encode_source(frames[:1]), frames)
            assert output.prediction.shape == (2, 3, 64, 64)
            assert 0 <= output.prediction.min() and output.prediction.max() <= 1
    # the detector alone does not animate: one line says what it is for
    with pytest.raises(UserError, match="--checkpoint_with_kp"):
        load_model(SHIPPED_DETECTOR, CPU)


def test_a_model_file_animates_and_serves_as_detector_but_does_not_resume(tmp_path, dataset_root):
    from scripts.export_model import main as export

    config = small_config(tmp_path, dataset_root, "tiny-fomm.yaml")
    assert quiet_run("--config", config, "--mode", "train", "--max_steps", "2", "--log_dir", str(tmp_path / "one")) == 0
    (run_dir,) = glob.glob(str(tmp_path / "one" / "*"))
    model_path = str(tmp_path / "models" / "stage-one.pth.tar")
    assert export([run_dir, "--out", model_path, "--training_time", "1 s"]) == 0
    file = read_checkpoint(model_path)
    # the networks inference runs (FOMM's discriminator only trains), the config and the provenance
    assert set(file) == set(MODEL_KEYS) | {"kp_detector", "generator"}
    assert file["provenance"]["sessions"][0]["seed"] == 0
    training = latest(tmp_path / "one")
    assert_identical(file["kp_detector"], training["kp_detector"])
    assert_identical(file["generator"], training["generator"])
    # it animates (results beside it, in models/stage-one/) ...
    assert quiet_run("--mode", "animate", "--checkpoint", model_path) == 0
    assert glob.glob(str(tmp_path / "models" / "stage-one" / "animation" / "*.mp4"))
    # ... and refuses to resume, in one line
    with pytest.raises(CheckpointError, match="model file .* cannot resume training"):
        load_training_checkpoint(model_path)
    # a labelled stage one's model file gives stage two its detector
    labelled = small_config(tmp_path, dataset_root, "tiny-detector.yaml")
    assert quiet_run("--config", labelled, "--mode", "train", "--max_steps", "2", "--log_dir",
                     str(tmp_path / "labelled")) == 0
    (labelled_dir,) = glob.glob(str(tmp_path / "labelled" / "*"))
    detector_path = str(tmp_path / "models" / "labelled.pth.tar")
    assert export([labelled_dir, "--out", detector_path, "--training_time", "1 s"]) == 0
    assert set(read_checkpoint(detector_path)) == set(MODEL_KEYS) | {"kp_detector"}
    stage_two = small_config(tmp_path, dataset_root, "tiny-heatmap.yaml")
    assert quiet_run("--config", stage_two, "--mode", "train", "--max_steps", "1", "--checkpoint_with_kp",
                     detector_path, "--log_dir", str(tmp_path / "two")) == 0
    assert_identical(latest(tmp_path / "two")["kp_detector"], latest(tmp_path / "labelled")["kp_detector"])


def test_the_shipping_commands_give_bit_identical_weights_from_the_same_seed(tmp_path, dataset_root):
    """The README's commands for the shipped models, a few steps each, twice: the labelled stage one, then
    stage two (heatmap and circles) from stage one's run folder."""
    results = []
    for attempt in ("a", "b"):
        os.makedirs(tmp_path / attempt)
        stage_one = small_config(tmp_path / attempt, dataset_root, "tiny-detector.yaml")
        assert quiet_run("--config", stage_one, "--mode", "train", "--max_steps", "3",
                         "--log_dir", str(tmp_path / attempt / "one")) == 0
        (run_dir,) = glob.glob(str(tmp_path / attempt / "one" / "*"))
        trained = [latest(tmp_path / attempt / "one")]
        for name in ("tiny-heatmap.yaml", "tiny-circles.yaml"):
            stage_two = small_config(tmp_path / attempt, dataset_root, name)
            log_dir = tmp_path / attempt / f"log-{name}"
            assert quiet_run("--config", stage_two, "--mode", "train", "--max_steps", "3", "--checkpoint_with_kp",
                             run_dir, "--log_dir", str(log_dir)) == 0
            trained.append(latest(log_dir))
        results.append(trained)
    for a, b in zip(*results):
        for key in ("kp_detector", "generator"):
            if key in a:
                assert_identical(a[key], b[key])
        assert a["step"] == 3


# ----------------------------------------------------------------------------------------------- the demo

@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    """The default synthetic dataset (what `make demo` generates: seed 0, 64 px), about 10 s."""
    from modules.data.synthetic import generate_dataset

    root = str(tmp_path_factory.mktemp("default-synthetic"))
    generate_dataset(root, seed=0)
    return root


def readme_demo_row() -> tuple[str, float, float, float, float]:
    """(pair, animation L1, SSIM, L1 tolerance, SSIM tolerance) from the README's demo-pair row and its note."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as stream:
        text = stream.read()
    row = re.search(r"^\| demo pair `([^`]+)`[^|]*\|([^\n]*)$", text, re.MULTILINE)
    assert row, "the README's results table has no '| demo pair `<source>__<driving>` ...' row"
    cells = [cell.strip() for cell in row.group(2).split("|")]
    tolerance = re.search(r"make demo` prints these within ([\d.]+) \(L1\) and ([\d.]+) \(SSIM\)", text)
    assert tolerance, "the README states no tolerance for the demo-pair row"
    # columns after the label: reconstruction L1, motion-region L1, SSIM, AKD; animation L1, motion-region L1, SSIM
    return row.group(1), float(cells[4]), float(cells[6]), float(tolerance.group(1)), float(tolerance.group(2))


def test_the_demo_writes_its_files_and_prints_the_readme_figures(tmp_path, default_dataset, capsys):
    from scripts.demo import demo_pair, run_demo

    pair, l1, ssim, l1_tolerance, ssim_tolerance = readme_demo_row()
    assert demo_pair(default_dataset) == pair                       # the README's row is the default pair
    result = run_demo(SHIPPED_HEATMAP, default_dataset, None, str(tmp_path / "demo"), "cpu")
    printed = capsys.readouterr().out
    assert result["result"]["l1"] == pytest.approx(l1, abs=l1_tolerance)
    assert result["result"]["ssim"] == pytest.approx(ssim, abs=ssim_tolerance)
    assert f"L1 {result['result']['l1']:.4f}, SSIM {result['result']['ssim']:.4f}" in printed
    assert "--source_image" in printed                               # how to animate one's own image
    from modules.data.video_io import open_video

    for name in ("result.mp4", "side-by-side.mp4"):
        video = open_video(str(tmp_path / "demo" / name))
        assert video.num_frames == 48
    assert open_video(str(tmp_path / "demo" / "side-by-side.mp4")).read([0])[0].shape == (64, 5 * 64, 3)
    import imageio.v3 as iio

    sheet = iio.imread(str(tmp_path / "demo" / "contact-sheet.png"))
    assert sheet.shape == (5 * 64, 8 * 64, 3)            # source, driving, mask, result, ground truth x 8 frames
    truth_first = iio.imread(os.path.join(default_dataset, "animation-gt", pair, "00000.png"))
    assert np.abs(sheet[4 * 64:, :64].astype(int) - truth_first).max() == 0          # last row: ground truth


def test_one_frame_of_the_demo_pair_is_closer_to_the_truth_than_the_readme_bound(default_dataset):
    """One animated frame, straight through the model: L1 against the ground truth below the README's figure
    for the whole pair plus its tolerance (the frame is the pair's first, its pose nearest the source's)."""
    from modules.data.dataset import frames_to_tensor
    from modules.data.video_io import open_video

    pair, l1, _, l1_tolerance, _ = readme_demo_row()
    source_name, driving_name = pair.split("__")
    _, model, _ = load_model(SHIPPED_HEATMAP, CPU)
    source = frames_to_tensor(open_video(os.path.join(default_dataset, "test", source_name)).read([0]))
    driving = frames_to_tensor(open_video(os.path.join(default_dataset, "test", driving_name)).read([0]))
    truth = frames_to_tensor(open_video(os.path.join(default_dataset, "animation-gt", pair)).read([0]))
    with torch.inference_mode():
        prediction = model.animate(model.encode_source(source), driving).prediction
    assert (prediction - truth).abs().mean().item() < l1 + l1_tolerance


def test_the_demo_says_in_one_line_what_is_missing(tmp_path, default_dataset):
    from scripts.demo import demo_pair
    from scripts.demo import main as demo

    with pytest.raises(UserError, match="test-pairs.csv: not found; generate the synthetic dataset"):
        demo_pair(str(tmp_path))
    assert demo(["--data", str(tmp_path), "--out", str(tmp_path / "demo")]) == 2
    assert demo(["--data", default_dataset, "--pair", "id000#00", "--out", str(tmp_path / "demo")]) == 2
    assert demo(["--data", default_dataset, "--pair", "nobody__id038#00", "--out", str(tmp_path / "demo")]) == 2
    assert demo(["--model", str(tmp_path / "missing.pth.tar"), "--data", default_dataset]) == 2
