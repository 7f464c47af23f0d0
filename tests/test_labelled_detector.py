"""The keypoint-labelled stage one (family: detector): labels on disk, flips, masked losses, training toward the
labels, FOMM-format checkpoints that serve --checkpoint_with_kp, exact resume, DDP, and pseudo-labels."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import config_path, train_ddp_on_two_gloo_processes, write_tiny

import run
from modules.config.family import KeypointLabels, StepContext
from modules.config.loading import load_config
from modules.config.sections import AugmentationParams, FlipParams, LabelParams
from modules.core.errors import UserError
from modules.core.files import read_checkpoint
from modules.data.augmentation import Augmentation, AugmentationDraw
from modules.data.dataset import FramesDataset
from modules.data.keypoint_labels import LabelLayout, labels_to_normalized
from modules.families.detector import heatmap_label_loss, keypoint_label_loss
from modules.nets.keypoint_detector import KPDetector, load_fomm_detector

JOINTS = ["head", "neck", "pelvis", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow", "l_hand", "r_hand", "l_hip",
          "r_hip", "l_knee", "r_knee", "l_foot", "r_foot"]


def train(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run.main(["--mode", "train", "--device", "cpu", *args])


def only_run_dir(log_dir) -> str:
    (run_dir,) = glob.glob(os.path.join(str(log_dir), "*"))
    return run_dir


def labelled_dataset(root, points=JOINTS, horizontal_flip=False, time_flip=False) -> FramesDataset:
    augmentation = AugmentationParams(flip_param=FlipParams(horizontal_flip=horizontal_flip, time_flip=time_flip))
    return FramesDataset(root, (64, 64), is_train=True, augmentation_params=augmentation,
                         labels=LabelParams(points=list(points)))


# ---------------------------------------------------------------------------------------------------------
# Labels on disk and in the batch

def test_items_carry_the_labelled_joints_in_normalised_coordinates(dataset_root):
    dataset = labelled_dataset(dataset_root)
    item = dataset[0]
    assert item["source_keypoints"].shape == (15, 2) and item["driving_visible"].shape == (15,)
    assert item["source_visible"].sum() == 15                     # the synthetic joints are always there
    joints = np.load(os.path.join(dataset_root, "keypoints", "train", item["name"] + ".npy"))   # (T, 15, 2) px
    pixels = (item["source_keypoints"].numpy() + 1) / 2 * 63
    distances = np.abs(joints - pixels[None]).max(axis=(1, 2))
    assert distances.min() < 1e-4                                  # exactly one frame's joints


def test_labels_of_resized_frames_follow_the_pixel_centres():
    layout = LabelLayout("unused", (0, 1), (0, 1), 0.5)
    # stored at 128 px, read at 64: pixel centre 0.5 of the big frame is the small frame's pixel centre 0
    rows = np.array([[[0.5, 127 - 0.5, 1.0], [np.nan, 3.0, 1.0]]], np.float32)
    value, visible = labels_to_normalized(rows, layout, (128, 128), (64, 64))
    np.testing.assert_allclose(value[0, 0], [-1.0, 1.0], atol=1e-6)
    assert visible.tolist() == [[1.0, 0.0]] and value[0, 1].tolist() == [0.0, 0.0]
    low = np.array([[[10.0, 10.0, 0.2], [10.0, 10.0, 0.9]]], np.float32)      # visibility below 0.5: missing
    assert labels_to_normalized(low, layout, (64, 64), (64, 64))[1].tolist() == [[0.0, 1.0]]


def test_horizontal_flip_mirrors_the_labels_and_swaps_left_and_right(dataset_root):
    plain = labelled_dataset(dataset_root)
    flipping = labelled_dataset(dataset_root, horizontal_flip=True)
    mirror = flipping.labels.mirror
    assert JOINTS[mirror[JOINTS.index("l_hand")]] == "r_hand" and mirror[JOINTS.index("head")] == JOINTS.index("head")
    flipped_items = 0
    for index in range(len(plain)):
        a, b = plain[index], flipping[index]                     # the same frames: draws use the same numbers
        if torch.equal(a["source"], b["source"]):
            assert torch.equal(a["source_keypoints"], b["source_keypoints"])
            continue
        flipped_items += 1
        assert torch.equal(a["source"].flip(-1), b["source"])
        expected = a["source_keypoints"][list(mirror)] * torch.tensor([-1.0, 1.0])
        torch.testing.assert_close(b["source_keypoints"], expected)
    assert flipped_items > 0


def test_time_flip_swaps_the_labels_with_the_frames():
    keypoints = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    visible = np.array([[1, 0], [1, 1]], np.float32)
    draw = AugmentationDraw(True, False, (0, 1, 2, 3), 1.0, 1.0, 1.0, 0.0)
    flipped, seen = Augmentation.apply_to_keypoints(keypoints, visible, draw, (0, 1))
    assert np.array_equal(flipped, keypoints[::-1]) and np.array_equal(seen, visible[::-1])


def test_label_errors_name_the_file_and_the_point(tmp_path, dataset_root):
    with pytest.raises(UserError, match="'wrist' not in .*points.json"):
        labelled_dataset(dataset_root, points=["head", "wrist"])
    with pytest.raises(UserError, match="l_hand without r_hand"):
        labelled_dataset(dataset_root, points=["head", "l_hand"], horizontal_flip=True)
    labelled_dataset(dataset_root, points=["head", "l_hand"])     # no flip: a lone left hand is fine
    os.makedirs(tmp_path / "copy")
    os.symlink(os.path.join(dataset_root, "train"), tmp_path / "copy" / "train")
    with pytest.raises(UserError, match="points.json: not found"):
        labelled_dataset(str(tmp_path / "copy"))
    os.makedirs(tmp_path / "copy" / "keypoints" / "train")
    with open(tmp_path / "copy" / "keypoints" / "points.json", "w") as stream:
        json.dump({"names": JOINTS, "mirror": []}, stream)
    with pytest.raises(UserError, match=r"keypoint labels not found"):
        labelled_dataset(str(tmp_path / "copy"))


# ---------------------------------------------------------------------------------------------------------
# Losses

def test_missing_labels_contribute_nothing():
    torch.manual_seed(0)
    value = (torch.rand(2, 3, 2) * 2 - 1).requires_grad_()
    raw = torch.rand(2, 3, 6, 6).requires_grad_()
    label = torch.rand(2, 3, 2) * 2 - 1
    visible = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    other = label.clone()
    other[visible == 0] = 5.0                                   # anything where the label is missing
    for prediction, loss in ((value, lambda lab: keypoint_label_loss(value, lab, visible)),
                             (raw, lambda lab: heatmap_label_loss(raw, lab, visible, 0.01))):
        a, b = loss(label), loss(other)
        assert torch.equal(a, b)
        (gradient,) = torch.autograd.grad(a, prediction)
        assert torch.all(gradient[visible == 0] == 0) and torch.any(gradient[visible == 1] != 0)
    assert keypoint_label_loss(value, label, torch.zeros(2, 3)).item() == 0.0


def test_heatmap_loss_is_zero_for_gaussians_at_the_labels():
    from modules.nets.keypoint_detector import draw_gaussians

    label = torch.tensor([[[0.2, -0.3], [-0.5, 0.4]]])
    raw = draw_gaussians(label, (16, 16), 0.01)
    assert heatmap_label_loss(raw, label, torch.ones(1, 2), 0.01).item() < 1e-12
    assert heatmap_label_loss(raw, label.flip(1), torch.ones(1, 2), 0.01).item() > 1e-3


def tiny_detector_config():
    config = load_config(config_path("tiny-detector.yaml"))
    config.model_params.kp_detector_params.block_expansion = 8
    config.model_params.kp_detector_params.max_features = 32
    return config


@pytest.mark.parametrize("term", ["keypoint", "heatmap"])
def test_a_few_steps_move_the_keypoints_toward_the_labels(dataset_root, term):
    """Either label term alone pulls the detector toward the labels: the keypoint L1 moves the soft-argmax
    keypoints, the heatmap term the raw maps (and through them the keypoints, more slowly)."""
    from modules.families.build import build_model, build_trainable

    config = tiny_detector_config()
    weights = config.train_params.loss_weights
    weights.keypoint, weights.heatmap = (10.0, 0.0) if term == "keypoint" else (0.0, 1000.0)
    torch.manual_seed(0)
    model = build_model(config)
    trainable = build_trainable(config, model)
    assert trainable.optimized() == ["kp_detector"] and list(trainable.networks()) == ["kp_detector"]
    dataset = labelled_dataset(dataset_root)
    items = [dataset[i] for i in range(4)]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0] if key != "name"}
    labels = KeypointLabels(batch["source_keypoints"], batch["source_visible"], batch["driving_keypoints"],
                            batch["driving_visible"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    context = StepContext(autocast=contextlib.nullcontext, backward=lambda loss: loss.backward())

    def distance() -> tuple[float, float]:
        """(keypoints to labels, raw heatmaps to the label Gaussians) on the source frames, eval mode."""
        model.eval()
        with torch.no_grad():
            detected = model.kp_detector(batch["source"])
        model.train()
        visible = labels.source_visible
        return (float(keypoint_label_loss(detected.value, labels.source, visible)),
                float(heatmap_label_loss(detected.raw_heatmap, labels.source, visible,
                                         config.model_params.heatmap_variance)))

    before = distance()
    for _ in range(60):
        optimizer.zero_grad()
        step = trainable.training_step(batch["source"], batch["driving"], context, labels=labels)
        optimizer.step()
    assert set(step.losses) == {"keypoint", "heatmap", "equivariance_value", "equivariance_jacobian"}
    assert step.losses["heatmap" if term == "keypoint" else "keypoint"].item() == 0.0     # weight 0: not computed
    after = distance()
    moved = 0 if term == "keypoint" else 1
    assert after[moved] < 0.5 * before[moved], (before, after)
    assert after[0] < before[0]                                   # the keypoints get closer either way
    assert len(step.shown()) == 5


def test_a_config_that_would_train_nothing_from_labels_is_refused(tmp_path):
    with open(config_path("tiny-detector.yaml")) as stream:
        data = yaml.safe_load(stream)
    data["train_params"]["loss_weights"].update(keypoint=0, heatmap=0)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert run.main(["--mode", "train", "--config", str(path)]) == 2
    data["train_params"]["loss_weights"].update(keypoint=10)
    data["model_params"]["label_params"]["points"] = ["head"]
    path.write_text(yaml.safe_dump(data))
    from modules.core.errors import ConfigError

    with pytest.raises(ConfigError, match="label_params.points: expected one name per keypoint"):
        load_config(str(path))


# ---------------------------------------------------------------------------------------------------------
# Through run.py: checkpoints, --checkpoint_with_kp, resume, DDP

def test_checkpoint_is_fomms_kp_detector_and_serves_checkpoint_with_kp(tmp_path, dataset_root, capsys):
    config = write_tiny(tmp_path, "tiny-detector.yaml", dataset_root, log_freq=1)
    assert train("--config", config, "--log_dir", str(tmp_path / "log")) == 0
    run_dir = only_run_dir(tmp_path / "log")
    checkpoint = read_checkpoint(glob.glob(os.path.join(run_dir, "00000000-checkpoint.pth.tar"))[0])
    assert {"kp_detector", "optimizer_kp_detector", "epoch"} <= set(checkpoint) and "generator" not in checkpoint
    assert os.path.isfile(os.path.join(run_dir, "train-vis", "00000000-train.png"))
    assert glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
    # FOMM's own constructor and strict loading
    kwargs = load_config(config).model_params.detector_kwargs()
    fomm_detector = KPDetector(**kwargs)
    fomm_detector.load_state_dict(checkpoint["kp_detector"], strict=True)
    assert all(not key.startswith("module.") for key in checkpoint["kp_detector"])
    # the heatmap and circles configs share its detector settings: it is their --checkpoint_with_kp
    for name in ("tiny-heatmap.yaml", "tiny-circles.yaml"):
        assert load_config(config_path(name)).model_params.detector_kwargs() == kwargs
    detector = load_fomm_detector(run_dir, kwargs)
    for key, value in detector.state_dict().items():
        assert torch.equal(value, checkpoint["kp_detector"][key])
    heatmap = write_tiny(tmp_path, "tiny-heatmap.yaml", dataset_root)
    assert train("--config", heatmap, "--checkpoint_with_kp", run_dir, "--log_dir", str(tmp_path / "stage2"),
                 "--max_steps", "1") == 0
    # it does not animate: one clear line
    capsys.readouterr()
    assert run.main(["--mode", "reconstruction", "--checkpoint", run_dir]) == 2
    assert "has no generator to reconstruct or animate with" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["taichi-256-detector.yaml", "vox-256-detector.yaml"])
def test_the_256_configs_train_exactly_fomms_kp_detector(name):
    from test_detector import fomm_keys

    from modules.families.build import build_model, build_trainable

    config = load_config(config_path(name))
    trainable = build_trainable(config, build_model(config))
    state = trainable.networks()["kp_detector"].state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == fomm_keys("kp_detector")


def test_ddp_on_two_gloo_processes(tmp_path, dataset_root):
    config = write_tiny(tmp_path, "tiny-detector.yaml", dataset_root, batch_size=4)
    run_dir = train_ddp_on_two_gloo_processes(config, tmp_path / "log")
    assert glob.glob(os.path.join(run_dir, "*-checkpoint.pth.tar")) or \
        glob.glob(os.path.join(run_dir, "*-interrupted.pth.tar"))


# ---------------------------------------------------------------------------------------------------------
# Pseudo-labels

def test_label_keypoints_moves_with_a_shifted_face(tmp_path):
    pytest.importorskip("dlib")
    from PIL import Image
    from skimage import data

    from scripts.label_keypoints import FACE_POINTS, label_dataset

    photo = data.astronaut()                                      # 512x512, a face in the upper middle
    dx, dy = 12, 7
    # two 400 px crops: in the second the whole picture has moved by (dx, dy)
    crops = [np.ascontiguousarray(photo[20 - y:420 - y, 20 - x:420 - x]) for x, y in ((0, 0), (dx, dy))]
    for split in ("train", "test"):
        folder = tmp_path / "data" / split / "astronaut#00"
        os.makedirs(folder)
        for index, image in enumerate(crops):
            Image.fromarray(image).save(folder / f"{index:05d}.png")
    root = str(tmp_path / "data")
    done = label_dataset(root, "face", progress=False)
    assert done["labelled"] == 2 and done["found"] == 1.0
    labels = np.load(os.path.join(root, "keypoints", "train", "astronaut#00.npy"))
    assert labels.shape == (2, 68, 3) and labels[..., 2].min() == 1.0
    moved = labels[1, :, :2] - labels[0, :, :2]
    np.testing.assert_allclose(np.median(moved, axis=0), [dx, dy], atol=1.0)
    with open(os.path.join(root, "keypoints", "points.json")) as stream:
        described = json.load(stream)
    assert described["names"] == list(FACE_POINTS) and ["jaw_00", "jaw_16"] in described["mirror"]
    # resumable: a complete file is kept, an incomplete one is labelled again
    np.save(os.path.join(root, "keypoints", "test", "astronaut#00.npy"), np.zeros((1, 68, 3), np.float32))
    again = label_dataset(root, "face", progress=False)
    assert (again["labelled"], again["skipped"]) == (1, 1)
    # and the dataset reads them as labels
    dataset = FramesDataset(root, (64, 64), is_train=True, labels=LabelParams(points=["nose_30", "jaw_08"]))
    assert dataset[0]["source_visible"].tolist() == [1.0, 1.0]


def test_training_reads_only_the_train_split(tmp_path, dataset_root):
    """A copy of the dataset with nothing but train/ and its labels (no test/, no animation-gt/, no test
    labels) trains the same: no training step can have read them."""
    import shutil

    copy = tmp_path / "train-only"
    shutil.copytree(os.path.join(dataset_root, "train"), copy / "train")
    shutil.copytree(os.path.join(dataset_root, "keypoints", "train"), copy / "keypoints" / "train")
    shutil.copy(os.path.join(dataset_root, "keypoints", "points.json"), copy / "keypoints")
    full = write_tiny(tmp_path, "tiny-detector.yaml", dataset_root)
    assert train("--config", full, "--max_steps", "2", "--log_dir", str(tmp_path / "full")) == 0
    os.makedirs(tmp_path / "only")
    only = write_tiny(tmp_path / "only", "tiny-detector.yaml", str(copy))
    assert train("--config", only, "--max_steps", "2", "--log_dir", str(tmp_path / "only-log")) == 0
    a = read_checkpoint(glob.glob(os.path.join(only_run_dir(tmp_path / "full"), "*.pth.tar"))[0])
    b = read_checkpoint(glob.glob(os.path.join(only_run_dir(tmp_path / "only-log"), "*.pth.tar"))[0])
    for key, value in a["kp_detector"].items():
        assert torch.equal(value, b["kp_detector"][key]), key


def test_label_augmentation_moves_each_label_with_its_frame():
    """A bright dot at each label: after augment_labelled the dot is still under its (moved) label, a label
    pushed out of the frame turns missing, and the draws follow the global torch seed (exact resume)."""
    from modules.families.detector import LabelAugmentation, augment_labelled

    size, batch = 64, 4
    label = torch.tensor([[[-0.3, -0.2]], [[0.1, 0.4]], [[0.35, -0.35]], [[0.97, 0.0]]])      # (B, 1, 2)
    frames = torch.zeros(batch, 3, size, size)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for b in range(batch):
        x, y = ((label[b, 0] + 1) / 2 * size - 0.5).tolist()                 # normalised -> pixel centres
        frames[b] = torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 4.0)
    visible = torch.ones(batch, 1)
    labels = KeypointLabels(label, visible, label.clone(), visible.clone())
    params = LabelAugmentation(scale=[0.8, 1.2], rotation=0.3, shift=0.05)
    torch.manual_seed(3)
    source, driving, moved = augment_labelled(frames, frames.clone(), labels, params)
    torch.manual_seed(3)
    again = augment_labelled(frames, frames.clone(), labels, params)
    assert torch.equal(again[0], source) and torch.equal(again[2].source, moved.source)
    assert not torch.equal(moved.source, moved.driving)                     # each frame its own draw
    for images, points, seen in ((source, moved.source, moved.source_visible),
                                 (driving, moved.driving, moved.driving_visible)):
        for b in range(batch):
            if seen[b, 0] == 0:
                continue
            grey = images[b, 0]
            peak = torch.stack(torch.unravel_index(grey.argmax(), grey.shape)).flip(0).float()   # (x, y)
            expected = (points[b, 0] + 1) / 2 * size - 0.5
            assert torch.dist(peak, expected) < 1.5, (b, peak, expected)
        assert seen[:3].sum() >= 2                                          # the inner dots mostly stay in
    assert moved.source_visible[3, 0] + moved.driving_visible[3, 0] <= 1   # 0.97: out of the frame at least once


def test_label_augmentation_ranges_are_checked(tmp_path):
    data = yaml.safe_load(open(config_path("tiny-detector.yaml")))
    data["train_params"]["label_augmentation"] = {"scale": [1.2, 0.8]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="label_augmentation"):
        load_config(str(path))
