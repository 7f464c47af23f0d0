"""Single-image animation through run.py: any image and video in, driving frame count, fps and audio out."""
from __future__ import annotations

import glob
import os
import subprocess
import warnings

import imageio.v2 as imageio
import imageio_ffmpeg
import numpy as np
import pytest
import yaml
from conftest import write_tiny
from PIL import Image

import run
from modules.data.video_io import has_audio, open_video
from modules.inference.pipeline import fit_frame

FRAME = 64


def _train_tiny(root, config_name: str) -> str:
    from modules.data.synthetic import generate_dataset

    data = root / "data"
    if not data.exists():
        generate_dataset(str(data), seed=0, size=FRAME, num_train_identities=2, num_test_identities=2,
                         clips_per_identity=1, num_frames=6, num_pairs=2)
    path = write_tiny(root, config_name, str(data), landmarks=None, num_repeats=1)
    log_dir = root / ("log-" + config_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run.main(["--config", path, "--mode", "train", "--device", "cpu", "--log_dir", str(log_dir)]) == 0
    (run_dir,) = glob.glob(str(log_dir / "*"))
    return run_dir


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("animate")
    return {"heatmap": _train_tiny(root, "tiny-heatmap.yaml"), "circles": _train_tiny(root, "tiny-circles.yaml")}


def animate(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run.main(["--mode", "animate", "--device", "cpu", *args])


def odd_rgba_png(path) -> str:
    rgba = np.random.default_rng(0).integers(0, 256, size=(37, 53, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    return str(path)


def test_odd_rgba_png_and_gif_give_the_driving_frame_count_and_fps(tmp_path, checkpoints):
    gif = str(tmp_path / "driving.gif")
    frames = [np.full((40, 30, 3), 20 * i, dtype=np.uint8) for i in range(7)]
    imageio.mimsave(gif, frames, duration=100)                                   # 10 fps
    out = str(tmp_path / "result.mp4")
    assert animate("--checkpoint", checkpoints["heatmap"], "--source_image", odd_rgba_png(tmp_path / "s.png"),
                   "--driving_video", gif, "--result_video", out) == 0
    video = open_video(out)
    assert video.num_frames == 7 and video.fps == pytest.approx(10)
    assert video.read([0]).shape == (1, FRAME, FRAME, 3)


def test_audio_is_carried_and_circles_animate_relatively_with_visualisation(tmp_path, checkpoints):
    driving = str(tmp_path / "driving.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=96x80:rate=12", "-f", "lavfi", "-i", "sine=frequency=300", "-t", "1",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", driving], check=True)
    out = str(tmp_path / "result.mp4")
    assert animate("--checkpoint", checkpoints["circles"], "--source_image", odd_rgba_png(tmp_path / "s.png"),
                   "--driving_video", driving, "--result_video", out, "--adapt_scale", "--visualize",
                   "--batch_size", "5") == 0
    video = open_video(out)
    assert video.num_frames == open_video(driving).num_frames == 12 and video.fps == pytest.approx(12)
    assert video.read([0]).shape == (1, FRAME, FRAME, 3)                       # the result itself
    side = open_video(str(tmp_path / "result-side-by-side.mp4"))                 # written beside it, not instead
    assert side.num_frames == 12
    assert side.read([0]).shape == (1, FRAME, 4 * FRAME, 3)                    # source | driving | mask | result
    assert has_audio(out) and has_audio(side.path)


def test_bad_inputs_are_one_line_errors_and_leave_no_result(tmp_path, checkpoints, capsys):
    source = odd_rgba_png(tmp_path / "s.png")
    out = str(tmp_path / "result.mp4")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    clip = tmp_path / "clip"                       # a good driving video: the inputs are read before the model
    clip.mkdir()
    for number in range(2):
        Image.open(source).convert("RGB").save(clip / f"{number:05d}.png")
    cases = [
        (["--checkpoint", checkpoints["heatmap"], "--source_image", str(tmp_path / "none.png"), "--driving_video",
          str(broken)], "none.png: file not found"),
        (["--checkpoint", checkpoints["heatmap"], "--source_image", str(not_an_image), "--driving_video",
          str(broken)], "cannot decode the image"),
        (["--checkpoint", checkpoints["heatmap"], "--source_image", source, "--driving_video", str(broken)],
         "broken.mp4"),
        (["--checkpoint", checkpoints["heatmap"], "--source_image", source, "--driving_video", str(clip),
          "--motion", "relative"], "heatmap mask model, which has no keypoints to move"),
        (["--source_image", source, "--driving_video", str(broken)], "--mode animate needs --checkpoint"),
        (["--checkpoint", checkpoints["heatmap"], "--ablation", "no_ref"],
         "the ablations (no_pert, no_ref, no_id) are the perturbed-masks model's"),
    ]
    for args, fragment in cases:
        capsys.readouterr()
        assert animate(*args, "--result_video", out) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and fragment in error, error
        assert not os.path.exists(out)
    assert sorted(os.listdir(tmp_path)) == ["broken.mp4", "clip", "notes.png", "s.png"]


def test_fit_crop_keeps_the_aspect_and_resize_stretches():
    wide = np.zeros((20, 60, 3), dtype=np.uint8)
    wide[:, 20:40] = 255                                       # a white centre third
    cropped = fit_frame(wide, (16, 16), "crop")
    stretched = fit_frame(wide, (16, 16), "resize")
    assert cropped.shape == stretched.shape == (16, 16, 3)
    assert cropped.mean() > 250                                # only the centre square is kept
    assert 70 < stretched.mean() < 110                         # the whole picture, squeezed


def test_dataset_mode_animates_the_pairs_list_and_runs_twice(checkpoints):
    import csv

    run_dir = checkpoints["circles"]
    for attempt in range(2):
        assert animate("--checkpoint", run_dir, "--batch_size", "4") == 0
    out = os.path.join(run_dir, "animation")
    with open(yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["dataset_params"]["pairs_list"]) as stream:
        pairs = [(row["source"], row["driving"]) for row in csv.DictReader(stream)]
    names = sorted(f"{source}__{driving}" for source, driving in pairs)
    assert sorted(os.path.splitext(n)[0] for n in os.listdir(out) if n.endswith(".mp4")) == names
    for name in names:
        assert open_video(os.path.join(out, name + ".mp4")).num_frames == 6
        assert imageio.imread(os.path.join(out, "png", name + ".png")).shape == (FRAME, 6 * FRAME, 3)
    # the synthetic pairs have ground-truth animations: scored, with both trivial baselines
    import json

    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert sorted(metrics["pairs"]) == names and metrics["protocol"]["frames"] == 6 * len(names)
    assert 0 < metrics["mean"]["l1"] < 1 and -1 < metrics["mean"]["ssim"] < 1
    for baseline in ("copy_source", "copy_driving"):
        assert 0 < metrics["baselines"][baseline]["l1"] < 1
    # the copy-driving baseline, recomputed from the files themselves
    root = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["dataset_params"]["root_dir"]
    total = 0.0
    for name in names:
        driving = open_video(os.path.join(root, "test", name.split("__")[1])).read_all().astype(np.float64)
        truth = open_video(os.path.join(root, "animation-gt", name)).read_all().astype(np.float64)
        total += np.abs(driving - truth).mean() / 255 * len(truth)
    assert metrics["baselines"]["copy_driving"]["l1"] == pytest.approx(total / (6 * len(names)), rel=1e-6)


def test_dataset_mode_without_ground_truth_says_why_it_prints_no_metrics(checkpoints, capsys):
    """Real data has no ground-truth animation of its cross-identity pairs: no metrics.json, and a line saying
    why and where the metrics are (reconstruction), instead of silence."""
    run_dir = checkpoints["circles"]
    root = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["dataset_params"]["root_dir"]
    truth = os.path.join(root, "animation-gt")
    os.rename(truth, truth + "-aside")
    try:
        capsys.readouterr()
        assert animate("--checkpoint", run_dir, "--batch_size", "4") == 0
        out = capsys.readouterr().out
    finally:
        os.rename(truth + "-aside", truth)
    assert "no metrics: no pair has a ground-truth animation" in out and "--mode reconstruction" in out
    assert not os.path.exists(os.path.join(run_dir, "animation", "metrics.json"))


def test_animate_needs_both_image_and_video_or_neither(checkpoints, capsys):
    capsys.readouterr()
    assert animate("--checkpoint", checkpoints["heatmap"], "--source_image", "x.png") == 2
    assert "give both --source_image and --driving_video" in capsys.readouterr().err


def test_streaming_keeps_at_most_two_batches_of_frames_alive(tiny_model):
    """1,000 driving frames go through in batches; the reader never has more than two batches alive at once."""
    import weakref

    import torch
    from tqdm import tqdm

    from modules.inference.pipeline import stream_animation

    alive: list = []
    most = 0

    def reader():
        nonlocal most
        for start in range(0, 1000, 50):
            batch = np.full((50, FRAME, FRAME, 3), start % 256, dtype=np.uint8)
            alive.append(weakref.ref(batch))
            most = max(most, sum(ref() is not None for ref in alive))
            yield batch
            del batch

    class CountingWriter:
        frames = 0

        def write(self, frames):
            self.frames += len(frames)

    writer = CountingWriter()
    tiny_model.eval()
    with torch.inference_mode():
        stream_animation(tiny_model, np.zeros((FRAME, FRAME, 3), dtype=np.uint8), reader(), writer,
                         size=(FRAME, FRAME), device=torch.device("cpu"), motion="absolute", adapt_scale=False,
                         progress=tqdm(disable=True))
    assert writer.frames == 1000
    assert most <= 2


def test_bf16_animation_stays_close_to_fp32(tiny_model):
    import torch
    from tqdm import tqdm

    from modules.inference.pipeline import stream_animation

    class Collect:
        def __init__(self):
            self.frames = []

        def write(self, frames):
            self.frames.append(frames)

    rng = np.random.default_rng(0)
    source = rng.integers(0, 256, size=(FRAME, FRAME, 3), dtype=np.uint8)
    driving = rng.integers(0, 256, size=(6, FRAME, FRAME, 3), dtype=np.uint8)
    tiny_model.eval()
    results = {}
    for precision in ("no", "bf16"):
        writer = Collect()
        with torch.inference_mode():
            stream_animation(tiny_model, source, iter([driving[:3], driving[3:]]), writer, size=(FRAME, FRAME),
                             device=torch.device("cpu"), motion="absolute", adapt_scale=False, 
                             progress=tqdm(disable=True), precision=precision)
        results[precision] = np.concatenate(writer.frames).astype(np.float64)
    mse = np.mean((results["no"] - results["bf16"]) ** 2) / 255 ** 2
    assert 0 < mse and 10 * np.log10(1 / mse) > 35            # bf16 really ran, and stays within 35 dB PSNR


class BrightnessPose:
    """A stand-in landmark detector: a frame's pose is a fixed 4-point shape sheared by its mean brightness,
    so the driving frame as bright as the source has the source's pose."""

    name = "fake"
    num_points = 4
    min_size = 1

    def detect(self, frames):
        from modules.evaluation.landmarks import Landmarks

        shape = np.array([[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]])
        shear = frames.reshape(len(frames), -1).mean(1) / 255                    # (T,)
        points = np.repeat(shape[None], len(frames), axis=0)
        points[:, :, 0] += shear[:, None] * points[:, :, 1]
        return Landmarks(points, np.ones((len(frames), 4), bool))


def test_find_best_frame_measures_relative_motion_from_the_closest_pose_as_fomm_does(tmp_path, checkpoints,
                                                                                     monkeypatch, capsys):
    import torch
    from tqdm import tqdm

    import modules.evaluation.landmarks
    from modules.inference.loading import load_model
    from modules.inference.pipeline import stream_animation

    monkeypatch.setattr(modules.evaluation.landmarks, "make_landmarker", lambda config, size: BrightnessPose())
    rng = np.random.default_rng(1)
    levels = [20, 200, 90, 160, 60]                                          # frame 2 matches the source (90)
    frames = np.stack([np.clip(rng.normal(level, 8, (FRAME, FRAME, 3)), 0, 255).astype(np.uint8) for level in levels])
    source = np.clip(rng.normal(90, 8, (FRAME, FRAME, 3)), 0, 255).astype(np.uint8)
    folder = tmp_path / "driving"
    folder.mkdir()
    for number, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{number:05d}.png")
    Image.fromarray(source).save(tmp_path / "source.png")
    out = str(tmp_path / "best.mp4")
    capsys.readouterr()
    assert animate("--checkpoint", checkpoints["circles"], "--source_image", str(tmp_path / "source.png"),
                   "--driving_video", str(folder), "--result_video", out, "--find_best_frame",
                   "--crop", "none", "--driving_crop", "none") == 0
    assert "best frame: 2 of 5" in capsys.readouterr().out
    assert open_video(out).num_frames == 5

    # FOMM animates forwards and backwards from the best frame with it as the reference. Every frame depends
    # only on the source, its own driving frame and the reference, so one forward pass with that reference
    # gives exactly the frames of a video that starts at frame 2 (compared before encoding, which is lossy).
    _, model, _ = load_model(checkpoints["circles"], torch.device("cpu"))

    def generate(order, reference):
        class Collect:
            frames: list = []

            def write(self, batch):
                self.frames.append(batch)

        writer = Collect()
        driving = frames[order]
        with torch.inference_mode():
            stream_animation(model, source, iter([driving[i:i + 2] for i in range(0, 5, 2)]), writer,
                             size=(FRAME, FRAME), device=torch.device("cpu"), motion="relative",
                             adapt_scale=False, progress=tqdm(disable=True), reference=reference)
        return np.concatenate(writer.frames).astype(int)

    best = generate([0, 1, 2, 3, 4], frames[2])
    assert np.array_equal(best[[2, 0, 1, 3, 4]], generate([2, 0, 1, 3, 4], None))
    assert not np.array_equal(best, generate([0, 1, 2, 3, 4], None))          # the reference matters


def test_find_best_frame_errors(tmp_path, checkpoints, capsys):
    source = odd_rgba_png(tmp_path / "s.png")
    driving = str(tmp_path / "driving.gif")
    imageio.mimsave(driving, [np.full((40, 30, 3), 20 * i, dtype=np.uint8) for i in range(3)], duration=100)
    cases = [(["--checkpoint", checkpoints["heatmap"], "--source_image", source, "--driving_video", driving,
               "--find_best_frame"], "absolute motion has none"),
             (["--checkpoint", checkpoints["circles"], "--find_best_frame"], "for one image by one video"),
             (["--checkpoint", checkpoints["circles"], "--source_image", source, "--driving_video", driving,
               "--find_best_frame"], "--find_best_frame needs landmarks: no keypoint regressor at")]
    for args, fragment in cases:
        capsys.readouterr()
        assert animate(*args) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and fragment in error, error
