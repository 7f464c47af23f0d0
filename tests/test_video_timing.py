"""Frame timing comes from timestamps, not a nominal rate: a variable-frame-rate driving video (a phone's) is
decoded one stored frame for one, and the animation keeps its duration (docs/inference.md, "Frame timing")."""
from __future__ import annotations

import os
import re
import subprocess
import warnings

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

import run
from modules.data.video_io import open_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = os.path.join(ROOT, "models", "tiny-heatmap.pth.tar")
# 10 frames of 40 ms, 6 of 120 ms, 7 of 40 ms: 23 frames over 1.4 s, where the container's nominal rate is 25
DELAYS = [0.04] * 10 + [0.12] * 6 + [0.04] * 7


def _frame(index: int, size: int = 64) -> np.ndarray:
    """A bar whose position tells the frame's index."""
    frame = np.zeros((size, size, 3), np.uint8)
    frame[:, 2 * index:2 * index + 4] = 255
    return frame


def _ffmpeg(*args: str) -> str:
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", *args],
                            capture_output=True, text=True)
    return result.stderr


def vfr_clip(folder, delays=DELAYS) -> str:
    """An h264 mp4 whose frames show for ``delays`` seconds each (ffmpeg's concat list, passed through)."""
    lines = ["ffconcat version 1.0"]
    for index, delay in enumerate(delays):
        name = os.path.join(str(folder), f"f{index:02d}.png")
        Image.fromarray(_frame(index)).save(name)
        lines += [f"file '{name}'", f"duration {delay}"]
    listing = os.path.join(str(folder), "list.txt")
    with open(listing, "w") as stream:
        stream.write("\n".join(lines) + "\n")
    path = os.path.join(str(folder), "vfr.mp4")
    _ffmpeg("-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", listing, "-fps_mode", "vfr",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", path)
    assert os.path.isfile(path)
    return path


def container_seconds(path: str) -> float:
    """The duration ffmpeg reads from the container's header (independent of this project's probe)."""
    hours, minutes, seconds = re.search(r"Duration: (\d+):(\d+):([\d.]+)", _ffmpeg("-i", path)).groups()
    return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def test_a_variable_rate_video_is_read_one_stored_frame_for_one(tmp_path):
    video = open_video(vfr_clip(tmp_path))
    assert video.num_frames == len(DELAYS)
    assert video.fps == pytest.approx(len(DELAYS) / sum(DELAYS))          # real time, not the nominal 25
    streamed = np.concatenate(list(video.iter_frames(8)))
    # ffmpeg's constant-rate default repeated the 120 ms frames (37 frames came out instead of 23)
    assert len(streamed) == len(DELAYS)
    bars = [int(np.argmax(frame[32, :, 0] > 128)) for frame in streamed]
    assert bars == [2 * i for i in range(len(DELAYS))]
    picked = [11, 12, 13, 20]                      # seeking reads the same stored frames
    assert np.abs(video.read(picked).astype(int) - streamed[picked]).max() <= 2


def test_a_gif_rate_counts_every_frame_delay(tmp_path):
    path = str(tmp_path / "delays.gif")
    frames = [Image.fromarray(_frame(i)) for i in range(6)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=[40, 40, 40, 200, 200, 80], loop=0)
    assert open_video(path).fps == pytest.approx(6 / 0.6)          # not 25, the first frame's 40 ms


def test_animating_a_variable_rate_video_keeps_its_duration_and_frame_count(tmp_path):
    driving = vfr_clip(tmp_path)
    source = str(tmp_path / "source.png")
    Image.fromarray(_frame(5)).save(source)
    out = str(tmp_path / "result.mp4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run.main(["--mode", "animate", "--device", "cpu", "--checkpoint", TINY_MODEL, "--source_image",
                         source, "--driving_video", driving, "--result_video", out, "--crop", "none",
                         "--driving_crop", "none", "--engine", "torch", "--mixed_precision", "no"]) == 0
    result = open_video(out)
    assert result.num_frames == len(DELAYS)
    one_frame = 1 / result.fps
    assert container_seconds(out) == pytest.approx(container_seconds(driving), abs=one_frame)
    assert result.num_frames / result.fps == pytest.approx(sum(DELAYS), abs=one_frame)
