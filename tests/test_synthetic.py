"""The synthetic dataset: determinism, layout, keypoints on the figure, ground-truth animation, motion, CLI."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from modules.data.synthetic import (JOINT_INDEX, JOINTS, LIMB_FIELDS, MIN_LIMB_LENGTH_RATIO, POSE_PARAMS, POSE_RANGES,
                                    SEGMENTS, STANDING_HEIGHT_RANGE, forward_kinematics, generate_dataset, identity_of,
                                    load_identities, load_pairs, load_splits, read_video, render, sample_identities,
                                    sample_trajectory, trajectory_keypoints)
from scripts.synthetic_dataset import main

SIZE = 64
TINY = dict(size=SIZE, num_train_identities=3, num_test_identities=2, clips_per_identity=2, num_frames=16,
            num_pairs=4)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(root, seed=5, **TINY)
    return root


def videos_of(root: Path, split: str) -> list[str]:
    return sorted(p.name for p in (root / split).iterdir())


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def segment_directions(keypoints: np.ndarray) -> np.ndarray:
    """Angle of every articulated segment (T, S) from keypoints (T, K, 2)."""
    pairs = [pair for field in LIMB_FIELDS for pair in SEGMENTS[field]]
    vectors = np.stack([keypoints[:, JOINT_INDEX[b]] - keypoints[:, JOINT_INDEX[a]] for a, b in pairs], axis=1)
    return np.arctan2(vectors[..., 1], vectors[..., 0]).astype(np.float64)


def segment_lengths(keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """Identity length field -> (T, n) pixel lengths of its segments."""
    return {field: np.stack([np.linalg.norm(keypoints[:, JOINT_INDEX[b]] - keypoints[:, JOINT_INDEX[a]], axis=-1)
                             for a, b in SEGMENTS[field]], axis=1) for field in LIMB_FIELDS}


def dilate(mask: np.ndarray) -> np.ndarray:
    """One-pixel dilation (3x3)."""
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


# ----------------------------------------------------------------------------------------------- determinism

def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    small = dict(size=SIZE, num_train_identities=2, num_test_identities=2, clips_per_identity=1, num_frames=4,
                 num_pairs=2)
    generate_dataset(tmp_path / "a", seed=3, **small)
    generate_dataset(tmp_path / "b", seed=3, **small)
    generate_dataset(tmp_path / "c", seed=4, **small)
    a, b, c = (all_files(tmp_path / name) for name in "abc")
    assert list(a) == list(b) and a == b
    assert any(path.endswith(".png") for path in a)
    frames = [path for path in a if path.endswith(".png") and path.startswith("train")]
    assert all(a[path] != c.get(path) for path in frames)
    assert a["identities.json"] != c["identities.json"]


# ---------------------------------------------------------------------------------------------------- layout

def test_layout_names_splits_frames_and_arrays(dataset):
    assert {p.name for p in dataset.iterdir()} == {"train", "test", "keypoints", "poses", "animation-gt",
                                                   "animation-gt-keypoints", "identities.json", "test-pairs.csv"}
    train, test = videos_of(dataset, "train"), videos_of(dataset, "test")
    assert len(train) == 3 * 2 and len(test) == 2 * 2
    for video in train + test:
        assert re.fullmatch(r"id\d{3}#\d{2}", video)
    assert not {identity_of(v) for v in train} & {identity_of(v) for v in test}
    splits = load_splits(dataset)
    assert {identity_of(v) for v in train} == {n for n, s in splits.items() if s == "train"}
    assert {identity_of(v) for v in test} == {n for n, s in splits.items() if s == "test"}

    for split, videos in (("train", train), ("test", test)):
        for video in videos:
            folder = dataset / split / video
            names = sorted(p.name for p in folder.iterdir())
            assert names == [f"{t:05d}.png" for t in range(TINY["num_frames"])]   # nothing but the frames
            with Image.open(folder / names[0]) as image:
                assert image.mode == "RGB" and image.size == (SIZE, SIZE)
            frames = read_video(folder)
            assert frames.dtype == np.uint8 and frames.shape == (TINY["num_frames"], SIZE, SIZE, 3)
            keypoints = np.load(dataset / "keypoints" / split / f"{video}.npy")
            poses = np.load(dataset / "poses" / split / f"{video}.npy")
            assert keypoints.dtype == np.float32 and keypoints.shape == (TINY["num_frames"], len(JOINTS), 2)
            assert poses.dtype == np.float32 and poses.shape == (TINY["num_frames"], len(POSE_PARAMS))
            # Keypoints inside the frame (pixel centres 0..size-1, edges at -0.5 and size-0.5).
            assert keypoints.min() >= -0.5 and keypoints.max() <= SIZE - 0.5
    assert len(JOINTS) >= 11 and {"head", "neck", "pelvis", "l_elbow", "r_hand", "l_knee", "r_foot"} <= set(JOINTS)

    with open(dataset / "test-pairs.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["source", "driving"] and len(rows) == 1 + TINY["num_pairs"]
    pairs = load_pairs(dataset)
    assert len(set(pairs)) == len(pairs)
    for source, driving in pairs:
        assert source in test and driving in test
        assert identity_of(source) != identity_of(driving)
        gt = dataset / "animation-gt" / f"{source}__{driving}"
        assert len(list(gt.iterdir())) == len(list((dataset / "test" / driving).iterdir()))
        gt_keypoints = np.load(dataset / "animation-gt-keypoints" / f"{source}__{driving}.npy")
        assert gt_keypoints.dtype == np.float32 and gt_keypoints.shape == (TINY["num_frames"], len(JOINTS), 2)


def test_other_frame_sizes_scale_the_same_figure():
    identity = sample_identities(np.random.default_rng(1), 2)[0]
    pose = sample_trajectory(np.random.default_rng(2), 3)[1]
    image, mask = render(identity, pose, 128)
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and mask.shape == (128, 128)
    k64, k128 = forward_kinematics(identity, pose, 64), forward_kinematics(identity, pose, 128)
    np.testing.assert_allclose(k128 + 0.5, 2 * (k64 + 0.5), atol=1e-4)


# ------------------------------------------------------------------------------------- keypoints and frames

def test_frames_are_the_rendered_poses_and_keypoints_lie_on_the_figure(dataset):
    identities = load_identities(dataset)
    for split in ("train", "test"):
        for video in videos_of(dataset, split):
            identity = identities[identity_of(video)]
            poses = np.load(dataset / "poses" / split / f"{video}.npy")
            keypoints = np.load(dataset / "keypoints" / split / f"{video}.npy")
            np.testing.assert_array_equal(keypoints, trajectory_keypoints(identity, poses, SIZE))
            frames = read_video(dataset / split / video)
            for t, pose in enumerate(poses):
                image, mask = render(identity, pose, SIZE)
                np.testing.assert_array_equal(image, frames[t])
                assert 0.05 < mask.mean() < 0.5            # a figure, not a speck and not the whole frame
                x, y = np.rint(keypoints[t]).astype(int).T
                on_figure = dilate(mask)[y, x]
                assert on_figure.all(), [JOINTS[i] for i in np.flatnonzero(~on_figure)]


def test_figure_fills_most_of_the_frame_height_and_limbs_are_thick_enough(dataset):
    for identity in load_identities(dataset).values():
        low, high = STANDING_HEIGHT_RANGE
        assert low - 1e-9 <= identity.standing_height <= high + 1e-9
        assert identity.arm_width * SIZE >= 3.0 and identity.leg_width * SIZE >= 3.0
    identity = next(iter(load_identities(dataset).values()))
    _, mask = render(identity, np.zeros(len(POSE_PARAMS), np.float32), SIZE)
    rows = np.flatnonzero(mask.any(axis=1))
    assert 0.6 * SIZE <= rows[-1] - rows[0] + 1 <= 0.9 * SIZE


# ------------------------------------------------------------------------------------ ground-truth animation

def test_ground_truth_is_the_source_body_with_the_driving_pose(dataset):
    identities = load_identities(dataset)
    for source, driving in load_pairs(dataset):
        a, b = identities[identity_of(source)], identities[identity_of(driving)]
        driving_poses = np.load(dataset / "poses" / "test" / f"{driving}.npy")
        driving_keypoints = np.load(dataset / "keypoints" / "test" / f"{driving}.npy")
        gt_keypoints = np.load(dataset / "animation-gt-keypoints" / f"{source}__{driving}.npy")
        expected = np.stack([forward_kinematics(a, pose, SIZE) for pose in driving_poses])
        np.testing.assert_array_equal(gt_keypoints, expected)

        # A's limb lengths (not B's), B's segment directions.
        lengths = segment_lengths(gt_keypoints)
        for field in LIMB_FIELDS:
            np.testing.assert_allclose(lengths[field], getattr(a, field) * SIZE, atol=2e-3)
        assert max(abs(getattr(a, f) - getattr(b, f)) * SIZE for f in LIMB_FIELDS) > 0.5
        np.testing.assert_allclose(np.angle(np.exp(1j * (segment_directions(gt_keypoints)
                                                         - segment_directions(driving_keypoints)))), 0, atol=1e-4)

        # The frames: A rendered in B's pose; not B's frame; A's background where neither shows a body.
        gt_frames = read_video(dataset / "animation-gt" / f"{source}__{driving}")
        driving_frames = read_video(dataset / "test" / driving)
        source_image = read_video(dataset / "test" / source)[0]     # the pair's source image: frame 0
        source_pose = np.load(dataset / "poses" / "test" / f"{source}.npy")[0]
        _, source_mask = render(a, source_pose, SIZE)
        for t, pose in enumerate(driving_poses):
            image, mask = render(a, pose, SIZE)
            np.testing.assert_array_equal(gt_frames[t], image)
            assert np.abs(gt_frames[t].astype(int) - driving_frames[t]).mean() > 5
            background = ~dilate(dilate(mask | source_mask))
            assert background.mean() > 0.3
            np.testing.assert_array_equal(gt_frames[t][background], source_image[background])


# ------------------------------------------------------------------------------------------- motion, shapes

def test_motion_is_smooth_and_not_trivial():
    moves = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        identity = sample_identities(rng, 1)[0]
        poses = sample_trajectory(rng, 48)
        low, high = np.array([POSE_RANGES[name] for name in POSE_PARAMS]).T
        assert poses.shape == (48, len(POSE_PARAMS)) and (poses >= low).all() and (poses <= high).all()
        keypoints = trajectory_keypoints(identity, poses, SIZE)
        steps = np.linalg.norm(np.diff(keypoints, axis=0), axis=-1)
        assert steps.max() < 0.05 * SIZE
        moves.append(np.linalg.norm(keypoints - keypoints[:1], axis=-1).max())
    assert np.mean(np.array(moves) > 0.1 * SIZE) >= 0.9 and np.median(moves) > 0.2 * SIZE


def test_dataset_clips_are_smooth(dataset):
    for split in ("train", "test"):
        for path in (dataset / "keypoints" / split).iterdir():
            keypoints = np.load(path)
            assert np.linalg.norm(np.diff(keypoints, axis=0), axis=-1).max() < 0.05 * SIZE


def test_identities_differ_in_shape():
    for seed in range(20):
        identities = sample_identities(np.random.default_rng(seed), 8)
        lengths = np.array([[getattr(i, f) for f in LIMB_FIELDS] for i in identities])
        assert (lengths.max(axis=0) / lengths.min(axis=0) >= MIN_LIMB_LENGTH_RATIO).all()
        # ... and no two identities share a body, colours or background
        for i in range(len(identities)):
            for j in range(i + 1, len(identities)):
                assert np.abs(lengths[i] - lengths[j]).max() > 0.005
                assert identities[i].background != identities[j].background
                assert identities[i].torso_colour != identities[j].torso_colour


# ------------------------------------------------------------------------------------------------------- CLI

def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    return lines[0]


def test_cli_refuses_a_non_empty_folder_and_force_replaces_the_dataset(tmp_path, capsys):
    out = tmp_path / "out"
    (out / "train" / "id999#00").mkdir(parents=True)        # a stale video from an earlier run
    (out / "notes.txt").write_text("keep me")
    args = ["--out", str(out), "--train_identities", "1", "--test_identities", "2", "--clips", "1",
            "--frames", "3", "--pairs", "1", "--quiet"]
    assert main(args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--out" in line and "not empty" in line and "--force" in line

    result = subprocess.run([sys.executable, "scripts/synthetic_dataset.py", *args, "--force"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert videos_of(out, "train") == ["id000#00"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert len(load_pairs(out)) == 1


@pytest.mark.parametrize("args, option", [
    (["--size", "8"], "--size"),
    (["--size", "abc"], "--size"),
    (["--frames", "1"], "--frames"),
    (["--test_identities", "1"], "--pairs"),        # pairs need two test identities
    (["--train_identities", "0"], "--train_identities"),
])
def test_cli_bad_arguments_give_one_line_naming_the_option(tmp_path, capsys, args, option):
    try:
        status = main(["--out", str(tmp_path / "x"), "--quiet", *args])
    except SystemExit as exit:                         # argparse's own checks (types)
        status = exit.code
    assert status == 2
    assert option in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()
