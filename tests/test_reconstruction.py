"""Reconstruction through run.py on a tiny trained checkpoint: files, sane metrics, running twice."""
from __future__ import annotations

import csv
import glob
import json
import os
import warnings

import imageio.v3 as iio
import pytest
import yaml
from conftest import config_path

import run
from modules.data.video_io import open_video

FRAME, FRAMES = 64, 8


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One training step of the tiny config on a small synthetic dataset -> the run folder."""
    from modules.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("reconstruction")
    generate_dataset(str(root / "data"), seed=0, size=FRAME, num_train_identities=2, num_test_identities=2,
                     clips_per_identity=1, num_frames=FRAMES, num_pairs=2)
    with open(config_path("tiny-heatmap.yaml")) as stream:
        data = yaml.safe_load(stream)
    data["dataset_params"]["root_dir"] = str(root / "data")
    data["dataset_params"]["pairs_list"] = str(root / "data" / "test-pairs.csv")
    data["train_params"].update(num_epochs=1, num_repeats=1, batch_size=2, num_workers=0)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(data))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run.main(["--config", str(config), "--mode", "train", "--device", "cpu",
                         "--log_dir", str(root / "log")]) == 0
    (run_dir,) = glob.glob(str(root / "log" / "*"))
    return run_dir


def reconstruct(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run.main(["--mode", "reconstruction", "--device", "cpu", *args])


def test_reconstruction_writes_videos_strips_and_sane_metrics_and_runs_twice(trained_run):
    for attempt in range(2):                                   # a second run replaces the first
        assert reconstruct("--checkpoint", trained_run, "--batch_size", "3") == 0
    out = os.path.join(trained_run, "reconstruction")
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert set(metrics) == {"protocol", "mean", "baselines", "skipped", "videos"}
    assert metrics["protocol"]["frames_counted"] == 2 * FRAMES and "frame 0 included" in metrics["protocol"]["frames"]
    assert set(metrics["videos"]) == {"id002#00", "id003#00"}
    mean, copy = metrics["mean"], metrics["baselines"]["copy_source"]
    assert 0 < mean["l1"] < 1 and -1 < mean["ssim"] < 1 and mean["psnr"] > 0
    assert 0 < copy["l1"] < 1 and copy["ssim"] < 1                  # the source differs from later frames
    # jitter (the landmarks' wobble) goes with the landmarks, and says so
    assert set(metrics["skipped"]) == {"akd", "mkr", "aed", "jitter"}
    assert metrics["skipped"]["jitter"].startswith("it follows the landmarks") and "jitter" not in mean
    for name, row in metrics["videos"].items():
        video = open_video(os.path.join(out, name + ".mp4"))
        assert video.num_frames == FRAMES and video.read([0]).shape == (1, FRAME, 5 * FRAME, 3)
        assert iio.imread(os.path.join(out, "png", name + ".png")).shape == (FRAME, FRAMES * FRAME, 3)
        assert row["frames"] == FRAMES
    rows = list(csv.DictReader(open(os.path.join(out, "metrics.csv"))))
    assert [r["video"] for r in rows] == sorted(metrics["videos"])
    assert float(rows[0]["prediction_l1"]) == pytest.approx(metrics["videos"][rows[0]["video"]]["prediction_l1"])


def test_excluding_frame_0_counts_one_frame_less_per_video(trained_run):
    assert reconstruct("--checkpoint", trained_run, "--exclude_first_frame") == 0
    metrics = json.load(open(os.path.join(trained_run, "reconstruction", "metrics.json")))
    assert metrics["protocol"]["frames_counted"] == 2 * (FRAMES - 1)
    assert "except frame 0" in metrics["protocol"]["frames"]


def test_reconstruction_needs_a_checkpoint_of_this_project(tmp_path, capsys):
    capsys.readouterr()
    assert reconstruct() == 2
    assert "--mode reconstruction needs --checkpoint" in capsys.readouterr().err
    assert reconstruct("--checkpoint", str(tmp_path / "none.pth.tar")) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_synthetic_akd_from_the_keypoint_regressor_in_reconstruction_and_animation(trained_run):
    """With a keypoint regressor in the dataset folder, AKD joins the tables (reconstruction and animation
    against the ground truth) and equals the regressor's own keypoints compared by hand; MKR and AED are
    skipped with their reasons. The regressor's weights are untrained: AKD only has to be computed right."""
    import numpy as np
    import torch

    from modules.config.loading import load_config
    from modules.data.dataset import FramesDataset
    from modules.evaluation.keypoint_regressor import KeypointRegressor, predict, save_regressor

    config = load_config(os.path.join(trained_run, "config.yaml"))
    root = config.dataset_params.root_dir
    path = os.path.join(root, "keypoint-regressor.pth")
    torch.manual_seed(3)
    regressor = KeypointRegressor(channels=8).eval()
    save_regressor(path, regressor, {"note": "untrained, for the test"})
    try:
        assert reconstruct("--checkpoint", trained_run, "--batch_size", "3") == 0
        metrics = json.load(open(os.path.join(trained_run, "reconstruction", "metrics.json")))
        assert set(metrics["skipped"]) == {"mkr", "aed"} and "always places every joint" in metrics["skipped"]["mkr"]
        assert metrics["protocol"]["landmarks"]["detector"] == "synthetic"
        # AKD by hand: the regressor on the saved prediction strips (the frames the scorer saw, rounded alike)
        # and on the real frames, mean |difference| in 256-px pixels over all frames of all videos
        dataset = FramesDataset.from_config(config.dataset_params, is_train=False)
        per_frame = []
        for index in range(len(dataset)):
            real = dataset.video(index).read_all()
            strip = iio.imread(os.path.join(trained_run, "reconstruction", "png", dataset.names[index] + ".png"))
            generated = strip.reshape(FRAME, -1, FRAME, 3).transpose(1, 0, 2, 3)
            difference = np.abs(predict(regressor, real) - predict(regressor, generated)) * 256
            per_frame += list(difference.reshape(len(real), -1).mean(1))
        assert metrics["mean"]["akd"] == pytest.approx(float(np.mean(per_frame)), rel=1e-4)
        assert metrics["baselines"]["copy_source"]["akd"] > 0

        assert run.main(["--mode", "animate", "--device", "cpu", "--checkpoint", trained_run]) == 0
        animation = json.load(open(os.path.join(trained_run, "animation", "metrics.json")))
        assert animation["protocol"]["landmarks"] == "synthetic"
        for row in [animation["mean"], *animation["baselines"].values()]:
            assert set(row) == {"l1", "psnr", "ssim", "motion_l1", "akd", "jitter", "flicker"} and row["akd"] >= 0
            assert row["jitter"] >= 0 and row["flicker"] >= 0
        # copying the source frame stands still: it flickers nowhere
        assert animation["baselines"]["copy_source"]["flicker"] == 0
    finally:
        os.remove(path)


def test_config_beside_a_checkpoint_changes_its_evaluation_sections_only(trained_run, tmp_path, capsys):
    """--config beside a checkpoint that holds its config: its metrics_params and reconstruction_params (the
    evaluation sections) apply, key by key; its networks and data stay the checkpoint's; a config without those
    sections is ignored with a warning that says so; a broken value is a one-line error naming the key."""
    settings = tmp_path / "evaluation.yaml"
    settings.write_text("metrics_params:\n  landmarks: none\nreconstruction_params:\n  num_videos: 1\n"
                        "model_params:\n  common_params:\n    num_kp: 99\n")            # networks: not applied
    with pytest.warns(UserWarning, match="its reconstruction_params, metrics_params used"):
        assert run.main(["--mode", "reconstruction", "--device", "cpu", "--checkpoint", trained_run,
                         "--config", str(settings)]) == 0
    metrics = json.load(open(os.path.join(trained_run, "reconstruction", "metrics.json")))
    assert len(metrics["videos"]) == 1 and metrics["skipped"]["akd"] == "metrics_params.landmarks is none"
    unrelated = tmp_path / "unrelated.yaml"
    unrelated.write_text("train_params:\n  num_epochs: 3\n")
    with pytest.warns(UserWarning, match="ignored .*only its reconstruction_params"):
        assert run.main(["--mode", "reconstruction", "--device", "cpu", "--checkpoint", trained_run,
                         "--config", str(unrelated)]) == 0
    assert len(json.load(open(os.path.join(trained_run, "reconstruction", "metrics.json")))["videos"]) == 2
    broken = tmp_path / "broken.yaml"
    broken.write_text("metrics_params:\n  landmarks: elbows\n")
    capsys.readouterr()
    assert reconstruct("--checkpoint", trained_run, "--config", str(broken)) == 2
    err = capsys.readouterr().err.strip()
    assert "metrics_params.landmarks" in err and "elbows" in err and len(err.splitlines()) == 1


def test_data_flag_evaluates_another_dataset_without_editing_the_checkpoint(trained_run, tmp_path, capsys):
    """--data ROOT: its test/ videos, or every video of a folder without a split (other sizes resized), into
    reconstruction-<ROOT's name>/; the model's own results stay; bad folders and modes are one-line errors."""
    import shutil

    import numpy as np
    from PIL import Image

    own = os.path.join(trained_run, "reconstruction")
    assert reconstruct("--checkpoint", trained_run) == 0
    before = open(os.path.join(own, "metrics.json")).read()
    flat = tmp_path / "clips"                               # no train/ or test/: all three videos
    rng = np.random.default_rng(0)
    for number, size in enumerate((64, 96, 128)):
        folder = flat / f"clip{number}"
        folder.mkdir(parents=True)
        for t in range(5):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{t:07d}.png")
    assert reconstruct("--checkpoint", trained_run, "--data", str(flat)) == 0
    metrics = json.load(open(os.path.join(trained_run, "reconstruction-clips", "metrics.json")))
    assert set(metrics["videos"]) == {"clip0", "clip1", "clip2"} and metrics["protocol"]["frames_counted"] == 15
    split = tmp_path / "split"
    shutil.copytree(flat / "clip1", split / "test" / "only")
    shutil.copytree(flat / "clip2", split / "train" / "ignored")
    assert reconstruct("--checkpoint", trained_run, "--data", str(split)) == 0
    assert set(json.load(open(os.path.join(trained_run, "reconstruction-split", "metrics.json")))["videos"]) == {"only"}
    assert open(os.path.join(own, "metrics.json")).read() == before
    capsys.readouterr()
    for args, message in (((str(tmp_path / "nowhere"),), "--data " + str(tmp_path / "nowhere") + ": no such folder"),
                          ((str(flat / "clip0" / "0000000.png"),), "not a folder")):
        assert reconstruct("--checkpoint", trained_run, "--data", *args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert run.main(["--mode", "animate", "--data", str(flat)]) == 2
    assert "--data is for --mode reconstruction" in capsys.readouterr().err
