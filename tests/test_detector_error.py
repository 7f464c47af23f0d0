"""scripts/measure/detector_error.py: a labelled detector's error to the labels per video, beside the mean pose, on a
tiny labelled dataset made here (frame folders stored at 64 px and larger, labels with visibility)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import config_path, save_fomm_checkpoint
from PIL import Image

from modules.config.formats import model_file
from modules.config.loading import config_from_dict, load_config
from modules.core.files import atomic_save
from modules.data.keypoint_labels import write_points_file
from modules.nets.keypoint_detector import KPDetector
from scripts.measure import detector_error

NAMES = ["head", "pelvis", "l_hand", "r_hand"]            # points.json: P = 4
POINTS = ["r_hand", "head", "l_hand"]                     # the config's K = 3 keypoints, in another order
COLUMNS = [NAMES.index(name) for name in POINTS]
SIDE = 64                                                 # frame_shape
# split -> video -> (stored (H, W), frames); each frame is one flat colour, its code (unique over the dataset)
VIDEOS = {"train": {"a": ((64, 64), 4), "b": ((128, 128), 3)}, "test": {"c": ((64, 64), 5), "d": ((128, 96), 4)}}
CODES = {(split, name, t): 10 * number + t + 1 for number, (split, name) in
         enumerate((s, n) for s in VIDEOS for n in VIDEOS[s]) for t in range(VIDEOS[split][name][1])}
# what the stubbed detector answers for each frame: [-1, 1] coordinates of the 64-px frame
ANSWERS = {code: np.random.default_rng(code).uniform(-1, 1, (len(POINTS), 2)) for code in CODES.values()}


def detector_config(root: str) -> dict:
    """config/tiny-detector.yaml with 3 of the labels' points as keypoints and a small detector."""
    with open(config_path("tiny-detector.yaml")) as stream:
        data = yaml.safe_load(stream)
    data["dataset_params"]["root_dir"] = root
    data["dataset_params"]["pairs_list"] = None
    data["model_params"]["common_params"]["num_kp"] = len(POINTS)
    data["model_params"]["kp_detector_params"].update(block_expansion=8, max_features=32)
    data["model_params"]["label_params"]["points"] = list(POINTS)
    return data


def write_dataset(root: str) -> None:
    """Frame folders of flat-colour PNGs and (T, 4, 3) labels: random pixels, random visibility, a NaN point;
    every point below the visibility threshold is moved 1000 px away, so that counting it would show."""
    rng = np.random.default_rng(0)
    write_points_file(os.path.join(root, "keypoints"), NAMES, [["l_hand", "r_hand"]])
    for (split, name, t), code in CODES.items():
        (height, width), frames = VIDEOS[split][name]
        os.makedirs(os.path.join(root, split, name), exist_ok=True)
        frame = Image.fromarray(np.full((height, width, 3), code, np.uint8))
        frame.save(os.path.join(root, split, name, f"{t:03d}.png"))
    for split, videos in VIDEOS.items():
        os.makedirs(os.path.join(root, "keypoints", split), exist_ok=True)
        for name, ((height, width), frames) in videos.items():
            xy = rng.uniform(0, 1, (frames, len(NAMES), 2)) * [width - 1, height - 1]
            visibility = rng.uniform(0, 1, (frames, len(NAMES), 1))
            xy = np.where(visibility < 0.5, xy + 1000, xy)
            xy[0, NAMES.index("l_hand")] = np.nan                  # missing although "visible"
            visibility[0, NAMES.index("l_hand")] = 1.0
            np.save(os.path.join(root, "keypoints", split, name + ".npy"),
                    np.concatenate([xy, visibility], axis=-1).astype(np.float32))


def save_model_file(path: str, data: dict) -> str:
    """A model file (what scripts/export_model.py ships) of ``data``'s detector with seeded random weights."""
    config = config_from_dict(data, "test")
    torch.manual_seed(0)
    state = KPDetector(**config.model_params.detector_kwargs()).state_dict()
    atomic_save(model_file({"kp_detector": state, "config": config.to_dict(), "step": 7, "epoch": 1},
                           ("kp_detector",), {"made by": "tests"}), path)
    return path


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> tuple[str, str, dict]:
    """(dataset root, model file of a random tiny detector, its config data)."""
    folder = tmp_path_factory.mktemp("detector-error")
    root = str(folder / "data")
    write_dataset(root)
    data = detector_config(root)
    return root, save_model_file(str(folder / "detector.pth.tar"), data), data


@pytest.fixture
def stubbed(monkeypatch):
    """The detector replaced by ANSWERS, looked up by each frame's colour."""
    def answer(detector, frames):
        return np.stack([ANSWERS[int(frame[0, 0, 0])] for frame in frames]).astype(np.float32)

    monkeypatch.setattr(detector_error, "detector_values", answer)


# ---------------------------------------------------------------------------------------------------------
# The figures, against a computation of their own

def to_stored(normalised: np.ndarray, stored: tuple[int, int]) -> np.ndarray:
    """[-1, 1] of the 64-px frame -> pixels of the frame stored at (H, W): pixel centres move as in a resize."""
    pixels = (normalised + 1) / 2 * (SIDE - 1)
    return (pixels + 0.5) * [stored[1] / SIDE, stored[0] / SIDE] - 0.5


def read_points(root: str, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(xy (T, K, 2) in stored pixels, visible (T, K)) of the config's points."""
    rows = np.load(os.path.join(root, "keypoints", split, name + ".npy"))[:, COLUMNS].astype(np.float64)
    return rows[..., :2], np.isfinite(rows[..., :2]).all(axis=-1) & (rows[..., 2] >= 0.5)


def expected_mean_pose(root: str) -> np.ndarray:
    """(K, 2) the train labels' mean in [-1, 1] of the 64-px frame, visible labels only."""
    total, count = np.zeros((len(POINTS), 2)), np.zeros(len(POINTS))
    for name, (stored, _) in VIDEOS["train"].items():
        xy, visible = read_points(root, "train", name)
        normalised = 2 * ((xy + 0.5) * [SIDE / stored[1], SIDE / stored[0]] - 0.5) / (SIDE - 1) - 1
        total += np.where(visible[..., None], normalised, 0).sum(axis=0)
        count += visible.sum(axis=0)
    return total / count[:, None]


def expected_video(root: str, name: str, frames: list[int]) -> dict:
    stored = VIDEOS["test"][name][0]
    xy, visible = read_points(root, "test", name)
    xy, visible = xy[frames], visible[frames]
    answers = np.stack([ANSWERS[CODES["test", name, t]] for t in frames])
    detector = np.linalg.norm(to_stored(answers, stored) - xy, axis=-1)[visible]
    pose = np.linalg.norm(to_stored(expected_mean_pose(root), stored)[None] - xy, axis=-1)[visible]
    return {"frames": len(frames), "visible": int(visible.sum()), "detector_px": detector.mean(),
            "mean_pose_px": pose.mean(), "sums": (detector.sum(), pose.sum())}


def test_per_video_and_overall_errors_match_a_computation_of_their_own(labelled, stubbed, tmp_path, capsys):
    root, model, _ = labelled
    out = str(tmp_path / "errors.json")
    assert detector_error.main([model, "--out", out]) == 0
    with open(out) as stream:
        result = json.load(stream)
    assert [row["name"] for row in result["videos"]] == ["c", "d"] and result["points"] == POINTS
    expected = {name: expected_video(root, name, list(range(VIDEOS["test"][name][1]))) for name in ("c", "d")}
    for row in result["videos"]:
        want = expected[row["name"]]
        assert (row["frames"], row["visible"]) == (want["frames"], want["visible"])
        assert row["visible"] < row["frames"] * len(POINTS)              # some labels were left out
        assert row["detector_px"] == pytest.approx(want["detector_px"], rel=1e-5)
        assert row["mean_pose_px"] == pytest.approx(want["mean_pose_px"], rel=1e-5)
    visible = sum(want["visible"] for want in expected.values())
    detector = sum(want["sums"][0] for want in expected.values()) / visible
    pose = sum(want["sums"][1] for want in expected.values()) / visible
    total = result["overall"]
    assert (total["videos"], total["frames"], total["visible"]) == (2, 9, visible)
    assert total["detector_px"] == pytest.approx(detector, rel=1e-5)
    assert total["mean_pose_px"] == pytest.approx(pose, rel=1e-5)
    assert total["ratio"] == pytest.approx(detector / pose, rel=1e-5)
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == (f"detector {detector:.2f} px, mean pose {pose:.2f} px ({detector / pose:.2f} of the "
                           f"baseline) over 2 videos, 9 frames")
    assert printed[-2].split()[:3] == ["overall", "9", str(visible)]
    assert not [name for name in os.listdir(tmp_path) if name != "errors.json"]     # no temporary left


def test_evenly_spaced_frames_and_the_train_split(labelled, stubbed, capsys):
    root, model, _ = labelled
    result = detector_error.measure(model, frames=2, progress=False)
    c, d = result["videos"]
    assert (c["frames"], d["frames"]) == (2, 2)
    assert c["detector_px"] == pytest.approx(expected_video(root, "c", [0, 4])["detector_px"], rel=1e-5)
    assert d["mean_pose_px"] == pytest.approx(expected_video(root, "d", [0, 3])["mean_pose_px"], rel=1e-5)
    assert detector_error.chosen_frames(10, 4).tolist() == [0, 3, 6, 9]
    trained = detector_error.measure(model, split="train", progress=False)
    assert [row["name"] for row in trained["videos"]] == ["a", "b"]
    assert trained["overall"]["frames"] == 7


def test_a_detector_answering_its_training_targets_scores_zero(labelled, monkeypatch):
    """The keypoints reach the labels' pixels by the inverse of the training targets' map: answering exactly
    the targets the loss compares with is no error, on frames stored larger and non-square too."""
    from modules.config.sections import LabelParams
    from modules.data.keypoint_labels import label_layout, labels_to_normalized

    root, model, _ = labelled
    layout = label_layout(root, LabelParams(points=list(POINTS)), needs_mirror=False)
    targets = {}
    for name, (stored, frames) in VIDEOS["test"].items():
        rows = np.load(os.path.join(root, "keypoints", "test", name + ".npy"))
        value, _ = labels_to_normalized(rows, layout, stored, (SIDE, SIDE))
        targets.update({CODES["test", name, t]: value[t] for t in range(frames)})
    monkeypatch.setattr(detector_error, "detector_values",
                        lambda detector, frames: np.stack([targets[int(f[0, 0, 0])] for f in frames]))
    result = detector_error.measure(model, progress=False)
    assert all(row["detector_px"] < 1e-3 for row in result["videos"])
    assert result["overall"]["mean_pose_px"] > 10


def test_the_real_detector_runs_on_the_frames(labelled, tmp_path):
    """No stub: the model file's network, compared with running it by hand on video c's 64-px frames."""
    from modules.core.files import read_checkpoint

    root, model, data = labelled
    result = detector_error.measure(model, frames=2, progress=False)
    detector = KPDetector(**config_from_dict(data, "test").model_params.detector_kwargs())
    detector.load_state_dict(read_checkpoint(model)["kp_detector"])
    frames = np.stack([np.asarray(Image.open(os.path.join(root, "test", "c", f"{t:03d}.png"))) for t in (0, 4)])
    with torch.no_grad():
        value = detector.eval()(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255).value.numpy()
    xy, visible = read_points(root, "test", "c")
    distances = np.linalg.norm((value + 1) / 2 * (SIDE - 1) - xy[[0, 4]], axis=-1)[visible[[0, 4]]]
    assert result["videos"][0]["detector_px"] == pytest.approx(distances.mean(), rel=1e-4)
    assert np.isfinite(result["videos"][1]["detector_px"])


def test_it_agrees_with_keypoints_vs_joints_on_the_synthetic_joints(dataset_root, tmp_path, capsys):
    """Where every label is visible and stored at frame_shape, its overall error is keypoints_vs_joints'
    "labelled joint" distance (the same detector through both loaders)."""
    from scripts.measure.keypoints_vs_joints import measure

    data = detector_config(dataset_root)
    data["model_params"]["common_params"]["num_kp"] = 15
    data["model_params"]["label_params"]["points"] = load_config(
        config_path("tiny-detector.yaml")).model_params.label_params.points
    model = save_model_file(str(tmp_path / "synthetic.pth.tar"), data)
    joints = measure(model)
    result = detector_error.measure(model, progress=False)
    assert result["overall"]["visible"] == result["overall"]["frames"] * 15
    assert result["overall"]["detector_px"] == pytest.approx(joints["labelled_px"], rel=1e-5)


# ---------------------------------------------------------------------------------------------------------
# One-line errors

def run_error(capsys, *argv: str) -> str:
    """The one stderr line of a run that exits 2 (a bad argument exits through argparse: SystemExit)."""
    try:
        status = detector_error.main(list(argv))
    except SystemExit as exit:
        status = exit.code
    assert status == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: "), error
    return error[0]


def copy_of(root: str, tmp_path) -> str:
    copy = str(tmp_path / "copy")
    shutil.copytree(root, copy)
    return copy


def test_missing_labels_and_empty_splits_are_one_line_errors(labelled, tmp_path, capsys):
    root, model, _ = labelled
    copy = copy_of(root, tmp_path)
    shutil.rmtree(os.path.join(copy, "keypoints", "test"))
    assert "keypoints/test: label folder not found" in run_error(capsys, model, "--data", copy)
    shutil.rmtree(os.path.join(copy, "keypoints"))
    assert "keypoints: label folder not found" in run_error(capsys, model, "--data", copy)
    shutil.rmtree(os.path.join(copy, "test"))
    os.makedirs(os.path.join(copy, "test"))
    write_points_file(os.path.join(copy, "keypoints"), NAMES, [])
    assert "no usable video for the test split" in run_error(capsys, model, "--data", copy)
    assert "--frames" in run_error(capsys, model, "--frames", "0")
    assert "--data" in run_error(capsys, model, "--data", str(tmp_path / "nowhere"))


def test_checkpoints_and_configs_without_what_it_needs_are_one_line_errors(labelled, tmp_path, capsys):
    root, model, data = labelled
    no_detector = str(tmp_path / "no-detector.pth.tar")
    torch.save({"config": data, "generator": {}}, no_detector)
    assert "no keypoint detector" in run_error(capsys, no_detector)
    heatmap_config = load_config(config_path("tiny-heatmap.yaml"))
    fomm_format = save_fomm_checkpoint(str(tmp_path / "fomm.pth.tar"), KPDetector(
        **heatmap_config.model_params.detector_kwargs()).state_dict())
    assert "holds no config" in run_error(capsys, fomm_format)
    assert "no model_params.label_params" in run_error(capsys, fomm_format, "--config",
                                                       config_path("tiny-heatmap.yaml"), "--data", root)
    renamed = dict(data, model_params=dict(data["model_params"], label_params={"points": ["head", "wrist", "l_hand"]}))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(renamed))
    assert "'wrist' not in" in run_error(capsys, model, "--config", str(bad))
