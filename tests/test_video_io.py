"""modules/data/video_io.py: every format reads the right frames, seeking is exact, modes and sizes are normalised."""
from __future__ import annotations

import os
import struct
import zlib

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from modules.data.video_io import FfmpegVideo, VideoError, load_image, open_video, probe_video, resize_frame, to_rgb

BLOCK = 16      # index-encoded frames: one bit per 16x16 block of a 64x64 frame


# ----------------------------------------------------------------------------------------------------------
# Writers and frame patterns (test_frames_dataset.py uses them too)

def index_frame(k: int, size: int = 64) -> np.ndarray:
    """A frame whose blocks spell k in binary (white = 1), robust to lossy codecs."""
    frame = np.zeros((size, size, 3), np.uint8)
    per_row = size // BLOCK
    for bit in range(per_row * per_row):
        if (k >> bit) & 1:
            r, c = divmod(bit, per_row)
            frame[r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = 255
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Inverse of index_frame, reading each block's centre."""
    per_row, k = frame.shape[0] // BLOCK, 0
    for bit in range(per_row * per_row):
        r, c = divmod(bit, per_row)
        centre = frame[r * BLOCK + 4:(r + 1) * BLOCK - 4, c * BLOCK + 4:(c + 1) * BLOCK - 4]
        k |= int(centre.mean() > 128) << bit
    return k


def flat_frames(levels, size=(32, 32), blue: int = 128) -> np.ndarray:
    """Flat frames (n, H, W, 3): red = levels[i], green = 20 * i, blue fixed."""
    frames = np.zeros((len(levels), *size, 3), np.uint8)
    for i, level in enumerate(levels):
        frames[i] = (level, 20 * i, blue)
    return frames


def write_folder(path, frames, pattern: str = "{:04d}.png") -> str:
    os.makedirs(path, exist_ok=True)
    for i, frame in enumerate(frames):
        imageio.imwrite(os.path.join(path, pattern.format(i)), frame)
    return str(path)


def write_video(path, frames, fps: float = 25, **kwargs) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    imageio.mimwrite(str(path), list(frames), fps=fps, macro_block_size=16, **kwargs)
    return str(path)


def write_strip(path, frames) -> str:
    imageio.imwrite(str(path), np.concatenate(list(frames), axis=1))
    return str(path)


def write_png16(path, array: np.ndarray) -> str:
    """A 16-bit PNG written by hand (imageio's Pillow writer has no 16-bit RGB)."""
    if array.ndim == 2:
        array = array[:, :, None]
    height, width, channels = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as stream:
        stream.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return str(path)


def close(a: np.ndarray, b: np.ndarray, tolerance: int = 10) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tolerance


# ----------------------------------------------------------------------------------------------------------
# Formats

def test_frame_folder_natural_order_ignores_other_files(tmp_path):
    frames = flat_frames([10 * i for i in range(12)])
    folder = write_folder(tmp_path / "clip#1", frames, pattern="frame{}.png")    # frame2 before frame10
    (tmp_path / "clip#1" / "notes.txt").write_text("not a frame")
    imageio.imwrite(tmp_path / "clip#1" / ".hidden.png", frames[0])
    video = open_video(folder)
    assert (video.name, video.num_frames, video.fps, len(video)) == ("clip#1", 12, None, 12)
    assert np.array_equal(video.read([11, 2, 2, 0]), frames[[11, 2, 2, 0]])
    assert np.array_equal(np.stack(list(video)), frames)
    assert [len(b) for b in video.iter_frames(5)] == [5, 5, 2]
    assert np.array_equal(video.read_all(), frames)
    assert probe_video(folder).num_frames == 12


def test_jpg_frames_and_read_of_nothing(tmp_path):
    frames = flat_frames([50, 150, 250])
    folder = tmp_path / "jpg"
    write_folder(folder, frames, pattern="{}.jpg")
    video = open_video(folder, frame_shape=(32, 32, 3))
    assert close(video.read([2, 0]), frames[[2, 0]], tolerance=6)
    assert video.read([]).shape == (0, 32, 32, 3)
    with pytest.raises(IndexError):
        video.read([3])


@pytest.mark.parametrize("extension", [".mp4", ".mov"])
def test_ffmpeg_file_reads_and_streams_the_right_frames(tmp_path, extension):
    frames = np.stack([index_frame(k) for k in range(40)])
    path = write_video(tmp_path / f"clip{extension}", frames, fps=20)
    video = open_video(path)
    assert isinstance(video, FfmpegVideo)
    assert (video.name, video.num_frames, video.fps) == ("clip", 40, 20.0)
    streamed = list(video.iter_frames(16))
    assert [len(b) for b in streamed] == [16, 16, 8]
    assert [frame_index(f) for f in np.concatenate(streamed)] == list(range(40))


def test_read_returns_exactly_the_requested_frames_with_short_gops(tmp_path):
    # Keyframes every 5 frames and B-frames: seeks land mid-GOP and decoding order differs from display order.
    frames = [index_frame(k) for k in range(60)]
    path = write_video(tmp_path / "seek.mp4", frames, ffmpeg_params=["-g", "5", "-bf", "2"])
    video = open_video(path)
    assert list(video.info.keyframes[:3]) == [0, 5, 10]
    rng = np.random.default_rng(0)
    for _ in range(6):
        indices = list(rng.choice(60, 4, replace=False)) + [int(rng.integers(60))]
        assert [frame_index(f) for f in video.read(indices)] == indices
    assert [frame_index(f) for f in video.read([59, 0, 1])] == [59, 0, 1]


def test_read_seeks_instead_of_decoding_the_whole_file(tmp_path, monkeypatch):
    path = write_video(tmp_path / "long.mp4", [index_frame(k) for k in range(60)], ffmpeg_params=["-g", "10"])
    video = open_video(path)
    runs = []
    decode = FfmpegVideo._decode_run
    monkeypatch.setattr(FfmpegVideo, "_decode_run", lambda self, start, count: runs.append((start, count))
                        or decode(self, start, count))
    assert [frame_index(f) for f in video.read([52, 23, 25])] == [52, 23, 25]
    assert runs == [(23, 3), (52, 1)]     # frames 23..25 in one pass, then a seek: 4 frames handed over, not 60


def test_gif(tmp_path):
    frames = flat_frames([0, 60, 120, 180, 240])
    path = str(tmp_path / "anim.gif")
    imageio.mimwrite(path, list(frames), duration=50, loop=0)
    video = open_video(path)
    assert (video.name, video.num_frames, video.fps) == ("anim", 5, 20.0)
    assert close(video.read([4, 1]), frames[[4, 1]], tolerance=8)
    assert close(video.read_all(), frames, tolerance=8)


def test_stacked_strip(tmp_path):
    frames = flat_frames([30, 90, 150, 210], size=(32, 24))
    path = write_strip(tmp_path / "strip.png", frames)
    video = open_video(path, frame_shape=(32, 24, 3))
    assert (video.name, video.num_frames, video.fps) == ("strip", 4, None)
    assert np.array_equal(video.read([3, 0]), frames[[3, 0]])
    assert np.array_equal(video.read_all(), frames)
    assert probe_video(path, (32, 24)).num_frames == 4
    square = flat_frames([1, 2, 3])
    assert open_video(write_strip(tmp_path / "square.png", square)).num_frames == 3      # no frame_shape: square
    with pytest.raises(VideoError, match="strip.png: a 96x32 image is not a strip of 40x32 frames"):
        open_video(path, frame_shape=(32, 40))
    with pytest.raises(VideoError, match="not a strip"):
        open_video(path, frame_shape=(30, 24))


def test_frames_of_another_size_are_resized(tmp_path):
    frames = flat_frames([40, 200], size=(48, 40))
    video = open_video(write_folder(tmp_path / "big", frames), frame_shape=(32, 32))
    assert np.array_equal(video.read([1, 0]), frames[[1, 0], :32, :32])     # flat colours stay exact
    encoded = write_video(tmp_path / "big.mp4", [index_frame(k) for k in range(8)])
    small = open_video(encoded, frame_shape=(32, 32))
    assert small.read([5, 2]).shape == (2, 32, 32, 3)
    assert next(small.iter_frames(3)).shape == (3, 32, 32, 3)
    # Antialiased: a 1-pixel checkerboard shrunk by 4 is flat grey, not aliased black or white.
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    assert close(resize_frame(to_rgb(board), (16, 16)), np.full((16, 16, 3), 128, np.uint8), tolerance=3)


def test_unequal_frames_without_frame_shape_are_an_error(tmp_path):
    folder = tmp_path / "mixed"
    write_folder(folder, flat_frames([1]))
    imageio.imwrite(folder / "0001.png", flat_frames([2], size=(16, 16))[0])
    with pytest.raises(VideoError, match="frames of different sizes"):
        open_video(folder).read([0, 1])
    assert open_video(folder, frame_shape=(32, 32)).read([0, 1]).shape == (2, 32, 32, 3)


def test_greyscale_alpha_16bit_palette_become_rgb_uint8(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    rgb = np.stack([grey, 255 - grey, np.full_like(grey, 7)], axis=-1)
    rgba = np.concatenate([rgb, np.zeros_like(grey)[..., None]], axis=-1)         # fully transparent
    grey16 = grey.astype(np.uint16) * 256 + 255
    cases = {
        "L.png": (grey, np.repeat(grey[..., None], 3, -1)),
        "LA.png": (np.stack([grey, grey], -1), np.repeat(grey[..., None], 3, -1)),
        "RGBA.png": (rgba, rgb),                                                    # alpha dropped, colour kept
    }
    for name, (stored, expected) in cases.items():
        imageio.imwrite(tmp_path / name, stored)
    Image.fromarray(grey > 100).save(tmp_path / "bits.png")                        # mode "1"
    cases["bits.png"] = (None, np.repeat(((grey > 100) * 255).astype(np.uint8)[..., None], 3, -1))
    write_png16(tmp_path / "I16.png", grey16)
    write_png16(tmp_path / "RGB16.png", rgb.astype(np.uint16) * 256 + 200)
    write_png16(tmp_path / "RGBA16.png", np.concatenate([rgb, grey[..., None]], -1).astype(np.uint16) * 256)
    cases.update({"I16.png": (None, np.repeat(grey[..., None], 3, -1)), "RGB16.png": (None, rgb),
                  "RGBA16.png": (None, rgb)})
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(tmp_path / "P.png")
    cases["P.png"] = (None, rgb)
    for name, (_, expected) in cases.items():
        image = load_image(str(tmp_path / name))
        assert image.dtype == np.uint8 and image.shape == (8, 8, 3), name
        assert close(image, expected, tolerance=6 if name == "P.png" else 0), name
    assert Image.open(tmp_path / "I16.png").mode.startswith("I;16")
    assert to_rgb(grey16).dtype == np.uint8


# ----------------------------------------------------------------------------------------------------------
# Bad files: one-line errors naming the file

def test_bad_videos_are_video_errors_naming_the_file(tmp_path):
    junk = tmp_path / "x.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (tmp_path / "empty").mkdir()
    strip = write_strip(tmp_path / "cut.png", flat_frames([1, 2, 3, 4]))
    data = open(strip, "rb").read()
    open(strip, "wb").write(data[: len(data) // 2])
    folder = write_folder(tmp_path / "clip", flat_frames([1, 2]))
    with open(os.path.join(folder, "0001.png"), "r+b") as stream:
        stream.truncate(40)
    for path, problem in [(junk, "cannot read the video"), (tmp_path / "empty", "no png/jpg frames"),
                          (strip, "cannot decode the image"), (tmp_path / "none.mp4", "not found"),
                          (tmp_path / "notes.txt", "not found")]:
        with pytest.raises(VideoError) as caught:
            probe_video(str(path), (32, 32))
        assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value)
        assert "\n" not in str(caught.value)
    video = open_video(folder)                   # listing does not decode: the broken frame shows when read
    assert video.read([0]).shape == (1, 32, 32, 3)
    with pytest.raises(VideoError, match="0001.png: cannot decode the image"):
        video.read([1])


def test_probe_counts_like_a_full_decode(tmp_path):
    import imageio_ffmpeg

    path = write_video(tmp_path / "count.mp4", [index_frame(k) for k in range(33)], fps=30)
    assert probe_video(path).num_frames == imageio_ffmpeg.count_frames_and_secs(path)[0] == 33
    assert len(open_video(path).read_all()) == 33


# ----------------------------------------------------------------------------------------------------------
# scripts/video_to_frames.py

def test_video_to_frames_keeps_the_layout_and_resizes(tmp_path, capsys):
    from modules.core.errors import UserError
    from scripts.video_to_frames import main

    source, target = tmp_path / "videos", tmp_path / "frames"
    write_video(source / "train" / "a#1.mp4", [index_frame(k) for k in range(6)])
    (source / "test").mkdir()
    imageio.mimwrite(source / "test" / "b.gif", list(flat_frames([10, 90, 170])), duration=40, loop=0)
    (source / "test" / "c.mp4").write_bytes(b"broken")
    assert main([str(source), str(target), "--size", "32"]) == 1         # c.mp4 failed, the others converted
    assert "c.mp4: cannot read the video" in capsys.readouterr().err
    converted = open_video(target / "train" / "a#1")
    assert converted.num_frames == 6 and converted.read([0]).shape == (1, 32, 32, 3)
    assert open_video(target / "test" / "b").num_frames == 3
    assert not os.path.exists(target / "test" / "c") and not os.path.exists(target / "test" / "c.partial")
    assert main([str(source), str(target)]) == 1                          # the done ones are skipped
    assert "2 already there" in capsys.readouterr().out
    with pytest.raises(UserError, match=f"{tmp_path / 'none'}: input folder not found"):
        main([str(tmp_path / "none"), str(target)])


# ----------------------------------------------------------------------------------------------------------
# Writing

def _clip_with_audio(path: str, size: int = 32, fps: int = 10, seconds: float = 1.0) -> str:
    """A test clip with a sine audio track, made with the bundled ffmpeg."""
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
                    "-f", "lavfi", "-i", f"testsrc=size={size}x{size}:rate={fps}",
                    "-f", "lavfi", "-i", "sine=frequency=440", "-t", str(seconds),
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", path], check=True)
    return path


def test_writer_streams_frames_keeps_fps_and_carries_audio(tmp_path):
    from modules.data.video_io import VideoWriter, has_audio, open_video

    driving = _clip_with_audio(str(tmp_path / "driving.mp4"), fps=10)
    assert has_audio(driving)
    out = str(tmp_path / "result.mp4")
    frames = (np.arange(10)[:, None, None, None] * 25 * np.ones((10, 32, 32, 3))).astype(np.uint8)
    with VideoWriter(out, fps=10, audio_from=driving) as writer:
        writer.write(frames[:4])
        writer.write(frames[4:])
    video = open_video(out)
    assert video.num_frames == 10 and video.fps == pytest.approx(10)
    assert has_audio(out)
    decoded = video.read(range(10)).astype(int).mean(axis=(1, 2, 3))
    assert np.all(np.abs(decoded - np.arange(10) * 25) < 4)          # the frames, in order
    assert sorted(os.listdir(tmp_path)) == ["driving.mp4", "result.mp4"]   # no partial file left


def test_writer_without_audio_source_writes_silent_video_and_odd_sizes(tmp_path):
    from modules.data.video_io import VideoWriter, has_audio, open_video

    out = str(tmp_path / "odd.mp4")
    with VideoWriter(out, fps=25) as writer:
        writer.write(np.full((3, 33, 31, 3), 128, dtype=np.uint8))
    assert not has_audio(out)
    assert open_video(out).num_frames == 3


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    from modules.data.video_io import VideoError, VideoWriter

    out = tmp_path / "result.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(str(out), fps=25) as writer:
            writer.write(np.zeros((2, 32, 32, 3), dtype=np.uint8))
            raise RuntimeError("model failed")
    assert os.listdir(tmp_path) == []
    with pytest.raises(VideoError, match="no frames"):
        with VideoWriter(str(out), fps=25):
            pass
    assert os.listdir(tmp_path) == []
    with pytest.raises(VideoError, match="cannot write .avi"):
        VideoWriter(str(tmp_path / "x.avi"), fps=25)


def test_writer_writes_gif(tmp_path):
    from modules.data.video_io import VideoWriter, open_video

    out = str(tmp_path / "result.gif")
    with VideoWriter(out, fps=10, audio_from=None) as writer:
        writer.write(np.zeros((5, 32, 32, 3), dtype=np.uint8))
    assert open_video(out).num_frames == 5


def test_images_come_upright_by_their_exif_orientation_and_float_images_keep_their_brightness(tmp_path):
    """A phone's portrait JPEG is stored on its side with an EXIF orientation; a float TIFF holds [0, 1]."""
    import warnings

    from PIL import Image

    from modules.data.video_io import load_image

    stored = np.zeros((20, 40, 3), dtype=np.uint8)          # wide as stored, its left half bright
    stored[:, :20] = 250
    exif = Image.Exif()
    exif[0x0112] = 6                                         # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    upright = load_image(str(tmp_path / "portrait.jpg"))
    assert upright.shape == (40, 20, 3)                      # tall, as it is shown
    assert upright[:20].mean() > 200 and upright[20:].mean() < 50   # the bright half on top after the turn
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F").save(tmp_path / "half.tif")
    assert abs(int(load_image(str(tmp_path / "half.tif"))[0, 0, 0]) - 128) <= 1
    Image.fromarray(np.linspace(-1, 3, 64, dtype=np.float32).reshape(8, 8), mode="F").save(tmp_path / "wide.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wide = load_image(str(tmp_path / "wide.tif"))
    assert wide.min() == 0 and wide.max() == 255 and any("stretched to 0-255" in str(w.message) for w in caught)
