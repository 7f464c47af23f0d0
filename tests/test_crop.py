"""Automatic crop and paste-back (modules/inference/crop.py): boxes, finders on synthetic figures and on a real
photograph (scikit-image's astronaut, public domain), paste-back, and the command line."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from modules.core.errors import UserError
from modules.inference.crop import (Box, SubjectFinder, check_box, feather_mask, fills_frame, landmark_bounds,
                                    parse_box, paste_back, square_box, steady_union)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGRESSOR = os.path.join(ROOT, "models", "synthetic-keypoint-regressor.pth")
sys.path.insert(0, ROOT)


def test_parse_box_reads_x_y_w_h_and_refuses_what_is_not_a_square_box_in_one_line():
    assert parse_box("10,20,64,64", "--crop") == Box(10, 20, 64)
    for text, expected in (("10,20,64", "x,y,w,h"), ("a,b,c,d", "x,y,w,h"), ("0,0,64,32", "square"),
                           ("-1,0,8,8", "square")):
        with pytest.raises(UserError, match=expected) as error:
            parse_box(text, "--crop")
        assert "--crop" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UserError, match="leaves photo.png"):
        check_box(Box(100, 0, 64), (128, 128, 3), "--crop", "photo.png")


def test_square_box_is_square_inside_the_frame_and_centred_on_the_subject():
    box = square_box((100, 50, 140, 130), 0.1, (480, 640))               # 40 wide, 80 high
    assert box.side == round(1.2 * 80) and box.inside((480, 640))
    assert abs(box.x + box.side / 2 - 120) <= 1 and abs(box.y + box.side / 2 - 90) <= 1
    corner = square_box((0, 0, 30, 30), 0.5, (100, 200))                 # pushed back inside, never shrunk
    assert corner == Box(0, 0, 60)
    huge = square_box((0, 0, 300, 300), 0.1, (100, 200))                 # at most the short side
    assert huge.side == 100 and huge.inside((100, 200))
    # only a (nearly) square frame that the box (nearly) covers is already a crop; a box in a non-square frame
    # never fills it, however much of the short side it spans
    assert fills_frame(Box(0, 0, 95), (100, 100)) and fills_frame(Box(0, 0, 95), (100, 105))
    assert not fills_frame(Box(0, 0, 60), (100, 100)) and not fills_frame(Box(0, 0, 100), (100, 200))


def test_landmark_bounds_need_three_points_and_raise_a_face_to_the_forehead():
    points = np.array([[0.25, 0.5], [0.75, 0.5], [0.5, 0.75], [0.0, 0.0]])
    found = np.array([True, True, True, False])
    assert landmark_bounds(points, found, (100, 200), "body") == (50.0, 50.0, 150.0, 75.0)
    left, top, right, bottom = landmark_bounds(points, found, (100, 200), "face")
    assert top == pytest.approx(50 - 0.5 * 25) and bottom == 75
    assert landmark_bounds(points, np.array([True, True, False, False]), (100, 200), "body") is None


def test_one_bad_detection_does_not_stretch_the_video_box_much():
    steady = [(40.0, 40.0, 80.0, 80.0)] * 30
    spoiled = steady[:15] + [(0.0, 0.0, 200.0, 200.0)] + steady[16:]
    assert steady_union(spoiled) == (40.0, 40.0, 80.0, 80.0)             # the running median drops it


def test_paste_back_of_an_identity_animation_keeps_the_photo_outside_the_box_exactly():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    box = Box(30, 10, 64)
    crop = photo[box.y:box.y + box.side, box.x:box.x + box.side][None]   # the animation returns the crop itself
    out = paste_back(photo, np.repeat(crop, 2, axis=0), box)
    assert out.shape == (2, 90, 130, 3) and out.dtype == np.uint8
    outside = np.ones(photo.shape[:2], bool)
    outside[box.y:box.y + box.side, box.x:box.x + box.side] = False
    assert np.array_equal(out[0][outside], photo[outside])
    assert np.abs(out[1].astype(int) - photo).max() <= 1                 # inside: within rounding


def test_paste_back_blends_over_the_feather_only_on_edges_inside_the_photo():
    photo = np.zeros((100, 100, 3), np.uint8)
    animated = np.full((1, 32, 32, 3), 255, np.uint8)
    box = Box(0, 20, 40)                                                  # touches the left border
    out = paste_back(photo, animated, box)[0, ..., 0].astype(int)
    assert out[40, 0] == 255                                             # the photo's border: no blend
    assert 0 < out[40, 39] < 64 and out[20, 20] < 64                     # inner edges fade towards the photo
    assert out[40, 25] == 255                                            # deeper than 10 px: the animation
    mask = feather_mask(box, photo.shape)
    assert mask.shape == (40, 40, 1) and mask.max() == 1 and mask.min() > 0


class StubFinder:
    """A subject finder that always finds the same box."""
    kind = "body"

    def __init__(self, box: Box):
        self.box = box

    def image_box(self, image: np.ndarray) -> Box:
        return self.box


class StubVideo:
    def read(self, indices):
        return np.zeros((len(indices), 64, 64, 3), np.uint8)


@pytest.mark.parametrize("shape, expected", [((512, 256, 3), Box(8, 16, 240)), ((256, 256, 3), None)])
def test_a_box_found_in_a_portrait_is_used_and_one_filling_a_square_photo_is_not(monkeypatch, shape, expected):
    import modules.inference.crop

    # 256x512 portrait, the person's head and shoulders in the top half: the box spans 94% of the short side,
    # yet the model must see that box (--fit crop would take the middle square and cut the head off)
    monkeypatch.setattr(modules.inference.crop, "make_finder", lambda config: (StubFinder(Box(8, 16, 240)), ""))
    photo = np.zeros(shape, np.uint8)
    plan = modules.inference.crop.plan_crops(None, photo, "photo.png", StubVideo(), "clip.mp4", "auto", "none")
    assert plan.source == expected and plan.driving is None
    assert plan.lines[0] == ("--crop auto: 8,16,240,240 (x,y,w,h)" if expected else
                             "--crop auto: the subject fills photo.png; the whole frame")


def smooth_backdrop(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smooth colour blotches with a little grain: a backdrop a video codec keeps nearly as it is."""
    from PIL import Image

    coarse = Image.fromarray(rng.uniform(60, 200, (3, 4, 3)).astype(np.uint8)).resize(shape[::-1], Image.BICUBIC)
    return np.clip(np.asarray(coarse, np.float64) + rng.normal(0, 2, shape + (3,)), 0, 255).astype(np.uint8)


def synthetic_photo(offset: tuple[int, int], scale: int = 2, canvas: tuple[int, int] = (240, 320), seed: int = 3):
    """A 64-px synthetic frame (figure and its background) scaled ``scale``x into a smooth photo-like canvas
    at ``offset`` (x, y): the photo and the pasted square."""
    from modules.data.synthetic import render, sample_identity, sample_trajectory

    rng = np.random.default_rng(seed)
    identity = sample_identity(rng)
    frame, _ = render(identity, sample_trajectory(rng, 4)[0], size=64)
    big = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    photo = smooth_backdrop(rng, canvas)
    x, y = offset
    photo[y:y + big.shape[0], x:x + big.shape[1]] = big
    return photo, Box(x, y, big.shape[0])


@pytest.mark.skipif(not os.path.isfile(REGRESSOR), reason="the shipped keypoint regressor is missing")
def test_the_synthetic_finder_follows_a_figure_moved_across_a_large_frame():
    from modules.evaluation.landmarks import SyntheticLandmarks

    finder = SubjectFinder("synthetic", SyntheticLandmarks(REGRESSOR))
    for offset in ((10, 20), (100, 60), (180, 100)):
        photo, pasted = synthetic_photo(offset)
        box = finder.image_box(photo)
        assert box.inside(photo.shape)
        centre = np.array([box.x, box.y]) + box.side / 2
        truth = np.array([pasted.x, pasted.y]) + pasted.side / 2
        assert np.abs(centre - truth).max() < 0.1 * pasted.side, (offset, box, pasted)
        assert abs(box.side - pasted.side) < 0.15 * pasted.side, (offset, box, pasted)


@pytest.mark.parametrize("kind", ["body", "face"])
def test_the_astronaut_is_found_by_the_body_and_face_finders(kind):
    pytest.importorskip("mediapipe" if kind == "body" else "dlib", reason="needs the metrics extra")
    from skimage.data import astronaut

    from modules.evaluation.landmarks import BodyLandmarks, FaceLandmarks

    photo = astronaut()                                                    # 512x512, her face near (255, 130)
    finder = SubjectFinder(kind, BodyLandmarks() if kind == "body" else FaceLandmarks())
    box = finder.image_box(photo)
    assert box is not None and box.inside(photo.shape)
    centre = (box.x + box.side / 2, box.y + box.side / 2)
    if kind == "face":
        assert 100 < box.side < 300 and 180 < centre[0] < 300 and 60 < centre[1] < 200
    else:                                                                  # head to waist: most of the photo
        assert box.side > 300 and 180 < centre[0] < 330


def animate(*args: str) -> int:
    import warnings

    import run

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run.main(["--mode", "animate", "--device", "cpu", "--engine", "torch", *args])


def placed_clip(folder, frames: int = 6, offset=(20, 60), canvas=(200, 300), seed: int = 5) -> str:
    """A driving clip of another synthetic figure, placed off-centre in large frames (a frame folder)."""
    from PIL import Image

    from modules.data.synthetic import render, sample_identity, sample_trajectory

    rng = np.random.default_rng(seed)
    identity = sample_identity(rng)
    backdrop = smooth_backdrop(rng, canvas)
    os.makedirs(folder)
    for number, pose in enumerate(sample_trajectory(rng, frames)):
        frame, _ = render(identity, pose, size=64)
        big = np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1)
        image = backdrop.copy()
        image[offset[1]:offset[1] + 128, offset[0]:offset[0] + 128] = big
        Image.fromarray(image).save(os.path.join(folder, f"{number:05d}.png"))
    return str(folder)


@pytest.mark.skipif(not os.path.isfile(REGRESSOR), reason="the shipped keypoint regressor is missing")
def test_animating_an_off_centre_figure_writes_the_photo_size_with_the_crop_pasted_back(tmp_path, capsys):
    from PIL import Image

    from modules.data.video_io import open_video

    photo, placed = synthetic_photo((150, 40), canvas=(200, 300))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    clip = placed_clip(tmp_path / "driving")
    model = os.path.join(ROOT, "models", "tiny-circles.pth.tar")
    common = ["--checkpoint", model, "--source_image", str(tmp_path / "photo.png"), "--driving_video", clip]
    assert animate(*common, "--result_video", str(tmp_path / "out.mp4")) == 0
    printed = capsys.readouterr().out
    assert "--crop auto: " in printed and "--driving_crop auto: " in printed
    assert "pasted back into the 300x200 image" in printed
    frames = open_video(str(tmp_path / "out.mp4")).read_all()
    assert frames.shape == (6, 200, 300, 3)
    far = np.ones((200, 300), bool)                                       # 10 px beyond the figure's square
    far[placed.y - 10:placed.y + placed.side + 10, placed.x - 10:placed.x + placed.side + 10] = False
    assert np.abs(frames[:, far].astype(int) - photo[far]).mean() < 2      # the photo (up to the codec)
    inside = frames[:, placed.y + 20:placed.y + placed.side - 20, placed.x + 20:placed.x + placed.side - 20]
    assert np.abs(np.diff(inside.astype(int), axis=0)).mean() > 0.5       # the figure moves
    assert animate(*common, "--result_video", str(tmp_path / "crop.mp4"), "--no_paste_back") == 0
    assert open_video(str(tmp_path / "crop.mp4")).read_all().shape == (6, 64, 64, 3)


def test_crop_errors_are_one_line_and_nothing_is_written(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(tmp_path / "photo.png")
    clip = placed_clip(tmp_path / "driving", frames=2, offset=(0, 0), canvas=(128, 128))
    heatmap = os.path.join(ROOT, "models", "tiny-heatmap.pth.tar")
    common = ["--checkpoint", heatmap, "--source_image", str(tmp_path / "photo.png"), "--driving_video", clip,
              "--result_video", str(tmp_path / "out.mp4")]
    for extra, expected in ((["--crop", "1,2,3"], "--crop '1,2,3': expected auto, none or x,y,w,h"),
                            (["--crop", "40,40,64,64"], "leaves"),
                            (["--driving_crop", "0,0,10,20"], "must be square"),
                            (["--smooth", "1"], "no keypoints to steady")):
        assert animate(*common, *extra) == 2
        error = capsys.readouterr().err.strip()
        assert expected in error and len(error.splitlines()) == 1, error
        assert not os.path.exists(tmp_path / "out.mp4")
    assert animate("--checkpoint", heatmap, "--crop", "0,0,8,8") == 2
    assert "never cropped" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isfile(REGRESSOR), reason="the shipped keypoint regressor is missing")
def test_crop_video_builds_a_resumable_dataset_of_square_clips(tmp_path, capsys):
    from PIL import Image

    from scripts.crop_video import main, split_of

    raw = tmp_path / "raw"
    raw.mkdir()
    for name, offset in (("walk", (20, 60)), ("wave", (150, 10))):
        folder = placed_clip(tmp_path / name, frames=4, offset=offset)
        frames = [Image.open(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
        frames[0].save(raw / f"{name}.gif", save_all=True, append_images=frames[1:], duration=40)
    (raw / "empty.gif").write_bytes(b"GIF89a")                               # unreadable: reported, left out
    out = tmp_path / "dataset"
    args = [str(raw), str(out), "--kind", "synthetic", "--size", "64", "--min_frames", "2"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "left out empty.gif" in captured.err and "2 of 3 videos" in captured.out
    for name in ("walk", "wave"):
        folder = out / split_of(name, 10) / name
        assert sorted(os.listdir(folder)) == [f"{i:07d}.png" for i in range(4)]
        assert Image.open(folder / "0000000.png").size == (64, 64)
    rows = (out / "crops.csv").read_text().splitlines()
    assert rows[0] == "name,split,box" and len(rows) == 3
    box = parse_box(rows[1].split(",", 2)[2].strip('"'), "box")
    assert abs(box.x + box.side / 2 - (20 + 64)) < 16 and abs(box.side - 128) < 24   # around the placed figure
    stamp = os.path.getmtime(out / split_of("walk", 10) / "walk" / "0000000.png")
    assert main(args) == 1                                                   # resumed: finished videos kept
    assert os.path.getmtime(out / split_of("walk", 10) / "walk" / "0000000.png") == stamp
    assert len((out / "crops.csv").read_text().splitlines()) == 3


@pytest.mark.skipif(not os.path.isfile(REGRESSOR), reason="the shipped keypoint regressor is missing")
def test_the_synthetic_finder_finds_nothing_where_there_is_no_figure():
    from modules.evaluation.landmarks import SyntheticLandmarks

    finder = SubjectFinder("synthetic", SyntheticLandmarks(REGRESSOR))
    rng = np.random.default_rng(0)
    assert finder.image_box(smooth_backdrop(rng, (120, 160))) is None
    assert finder.image_box(rng.integers(0, 256, (53, 37, 3), dtype=np.uint8)) is None
