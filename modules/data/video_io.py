"""Videos in the formats FOMM reads, decoded on demand: ``open_video(path, frame_shape) -> Video``.

A video is one of
  * a folder of frames: its .png/.jpg/.jpeg files in natural name order (``frame2`` before ``frame10``);
    other files and hidden files are ignored;
  * an .mp4 or .mov file, decoded by imageio-ffmpeg's ffmpeg binary;
  * a .gif file, decoded by Pillow;
  * a .png/.jpg strip of frames side by side (FOMM's "image of concatenated frames"): frame_shape gives the
    frame width (without one, frames are taken as square).

Every frame comes out as RGB uint8 (H, W, 3), whatever the file holds:
  * greyscale is repeated into three channels;
  * alpha is DROPPED, not composited: the stored colour is kept, as FOMM does (``image[..., :3]``), so a
    checkpoint sees the colours it was trained on;
  * 16-bit samples keep their high byte (what Pillow itself does with 16-bit RGB PNGs);
  * float samples in [0, 1] are scaled by 255 (other ranges stretched, with a warning);
  * images are turned upright as their EXIF orientation says;
  * with a frame_shape, frames of another size are resized with Pillow's bilinear filter, which Pillow widens
    by the shrink factor (antialiased), close to FOMM's ``skimage.transform.resize`` (order 1, anti_aliasing).

mp4/mov without decoding what is not needed:
  * probing copies the stream instead of decoding it (``ffmpeg -c copy -f framecrc``): one line per packet
    gives the frame count, each frame's timestamp and the keyframes; ``fps`` is the count over the span the
    timestamps cover, so a variable-frame-rate video keeps its duration (``timed_rate``), and decoding passes
    each stored frame through once (``every_stored_frame``). imageio_ffmpeg.count_frames_and_secs
    DECODES the whole file (``-vf null``): 50-80 ms against 14-18 ms for a 300-frame 256x256 h264 file;
  * ``read(indices)`` seeks with ffmpeg's input ``-ss`` to halfway between the wanted frame's timestamp and
    the previous one (ffmpeg then decodes from the keyframe before it and drops the earlier frames, so the
    first frame out is exactly the wanted one), and reads on without a new seek while no keyframe lies in
    between: 2 random frames of that file in 53 ms, decoding all of it 160 ms. imageio's ``get_data(i)`` is no
    help: it decodes the last 10 s before i the slow way on each seek (160 ms for the same 2 frames).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import subprocess
import warnings
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

from modules.core.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FFMPEG_EXTENSIONS = (".mp4", ".mov")
VIDEO_EXTENSIONS = FFMPEG_EXTENSIONS + (".gif",)

# A new ffmpeg process (about 10 ms) beats decoding on only when it skips more frames than this.
SEEK_MIN_SKIP = 8


class VideoError(UserError):
    """A video that cannot be read: the message is ``"{path}: {problem}"`` on one line."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self):
        # DataLoader workers pickle exceptions; the default would call __init__ with one argument.
        return (VideoError, (self.path, self.problem))


# ----------------------------------------------------------------------------------------------------------
# Frames: any image mode -> RGB uint8, and the one resize used everywhere

def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


EXIF_ORIENTATION = 0x0112


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """A float image -> uint8: values in [0, 1] (the usual float convention) scaled by 255, values in [0, 255]
    kept; any other range stretched to 0-255 with a warning (Pillow's own conversion clips it to near black)."""
    values = np.nan_to_num(values.astype(np.float64))
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low >= 0 and high <= 1:
        values = values * 255
    elif low < 0 or high > 255:
        warnings.warn(f"a float image with values in [{low:g}, {high:g}]: stretched to 0-255", UserWarning)
        values = (values - low) * (255 / (high - low))
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


def _image_to_rgb(image: Image.Image) -> np.ndarray:
    """A loaded Pillow image of any mode -> RGB uint8 (H, W, 3) (rules in the module docstring), turned upright
    as its EXIF orientation says (a phone's portrait photo is stored on its side)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (Pillow reads 16-bit RGB as 8-bit RGB already, keeping the high byte: do the same).
        array = (np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
    elif mode in ("L", "LA", "RGB", "RGBA"):
        array = np.asarray(image)
    elif mode == "F":
        array = _float_to_uint8(np.asarray(image))
    else:  # P, PA, 1, CMYK, YCbCr, ...: Pillow's own conversion (transparency is dropped like alpha)
        array = np.asarray(image.convert("RGB"))
    return to_rgb(array)


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) uint8/uint16/bool -> RGB uint8 (H, W, 3): grey repeated, alpha dropped."""
    if frame.dtype == np.bool_:
        frame = frame.astype(np.uint8) * 255
    elif frame.dtype == np.uint16:
        frame = (frame >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise TypeError(f"expected uint8, uint16 or bool frames, got {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    channels = frame.shape[2]
    if channels in (1, 2):           # grey, grey + alpha
        frame = np.repeat(frame[:, :, :1], 3, axis=2)
    elif channels == 4:              # RGBA
        frame = frame[:, :, :3]
    elif channels != 3:
        raise ValueError(f"expected 1 to 4 channels, got {channels}")
    return np.ascontiguousarray(frame)


def resize_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (h, w, 3) -> (H, W, 3) with Pillow's antialiased bilinear filter; unchanged if already (H, W)."""
    height, width = size
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


def load_image(path: str) -> np.ndarray:
    """One image file -> RGB uint8 (H, W, 3); a file Pillow cannot decode is a VideoError naming it."""
    try:
        with Image.open(path) as image:
            image.load()
            return _image_to_rgb(image)
    except FileNotFoundError:
        raise VideoError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise VideoError(path, f"cannot decode the image ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _frame_size(frame_shape: Optional[Sequence[int]]) -> Optional[tuple[int, int]]:
    if frame_shape is None:
        return None
    if len(frame_shape) not in (2, 3) or any(int(side) < 1 for side in frame_shape[:2]):
        raise ValueError(f"frame_shape must be (H, W) or (H, W, C) of positive integers, got {frame_shape}")
    return int(frame_shape[0]), int(frame_shape[1])


# ----------------------------------------------------------------------------------------------------------
# Probing: how many frames (and for mp4/mov where they are), without decoding

@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What probing learnt; ``open_video(path, info=...)`` reuses it instead of probing again."""
    num_frames: int
    # frames per second of real time (``timed_rate``: count over the timestamps' span, not the nominal rate)
    fps: Optional[float] = None
    timestamps: Optional[np.ndarray] = None   # mp4/mov: (num_frames,) seconds from the file's start, display order
    keyframes: Optional[np.ndarray] = None    # mp4/mov: sorted frame indices that decoding can start at


def video_kind(path: str) -> Optional[str]:
    """'frames', 'ffmpeg', 'gif' or 'strip' for what ``open_video`` can read at ``path``, else None."""
    if os.path.isdir(path):
        return "frames"
    extension = os.path.splitext(path)[1].lower()
    if extension in FFMPEG_EXTENSIONS:
        return "ffmpeg"
    if extension == ".gif":
        return "gif"
    if extension in IMAGE_EXTENSIONS:
        return "strip"
    return None


def video_name(path: str) -> str:
    """A folder's name, or a file's name without its extension."""
    base = os.path.basename(os.path.normpath(path))
    return base if os.path.isdir(path) else os.path.splitext(base)[0]


def list_frames(folder: str) -> list[str]:
    """The image files of a frame folder, in natural name order (hidden and non-image files left out)."""
    try:
        names = os.listdir(folder)
    except OSError as error:
        raise VideoError(folder, f"cannot list the folder ({error.strerror})") from None
    names = [n for n in names if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(names, key=_natural_key)


def _ffmpeg(args: list[str]) -> subprocess.CompletedProcess:
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True)


@functools.lru_cache(maxsize=None)
def every_stored_frame() -> tuple[str, ...]:
    """ffmpeg's output option that passes each stored frame through once. Without it, raw and image-pipe
    outputs are constant-rate: ffmpeg repeats frames of a variable-frame-rate video to fill its nominal rate
    (22 stored frames came out as 37), so frame i of a stream would not be the probe's frame i. ffmpeg 5.1
    renamed ``-vsync`` to ``-fps_mode`` and 7 dropped the old name; a build whose version does not parse is
    taken as recent (a git build)."""
    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], stdin=subprocess.DEVNULL,
                            capture_output=True)
    match = re.search(r"version n?(\d+)\.(\d+)", result.stdout.decode(errors="replace"))
    old = match is not None and (int(match.group(1)), int(match.group(2))) < (5, 1)
    return ("-vsync", "passthrough") if old else ("-fps_mode", "passthrough")


# ffmpeg's words -> plain ones (the first that matches); its option names mean nothing to a user.
_FFMPEG_REASONS = (
    (("matches no streams", "Failed to set value '0:v:0'", "does not contain any stream"),
     "the file holds no video stream"),
    (("moov atom not found",), "the file is incomplete (cut off while it was written?)"),
    (("Invalid data found",), "the data is damaged or not a video"),
    (("No space left",), "no space left on the disk"),
    (("Permission denied",), "permission denied"),
    (("No such file",), "file not found"),
)


def _ffmpeg_problem(stderr: bytes) -> str:
    """ffmpeg's reason in plain words, one line: a known cause, or its first error line with the
    '[in#0 @ 0x...]' prefix and any option names removed."""
    text = stderr.decode(errors="replace")
    for needles, reason in _FFMPEG_REASONS:
        if any(needle in text for needle in needles):
            return reason
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and "option" not in line and "FFMPEG" not in line.upper()[:6]]
    errors = [line for line in lines if "rror" in line or "nvalid" in line or "not found" in line]
    reason = (errors or lines or ["the decoder failed"])[0]
    return reason[:160]


def _probe_ffmpeg(path: str) -> VideoInfo:
    result = _ffmpeg(["-i", path, "-map", "0:v:0", "-c", "copy", "-f", "framecrc", "-"])
    if result.returncode != 0:
        raise VideoError(path, f"cannot read the video ({_ffmpeg_problem(result.stderr)})")
    numerator, denominator, pts, durations, keys = 1, 1, [], [], []
    for line in result.stdout.decode(errors="replace").splitlines():
        if line.startswith("#tb 0:"):
            numerator, denominator = (int(v) for v in line.split(":", 1)[1].strip().split("/"))
        elif line.startswith("0,"):
            # stream, dts, pts, duration, size, crc[, F=0x..]: flags are printed unless exactly KEY.
            fields = [f.strip() for f in line.split(",")]
            flags = next((int(f[2:], 16) for f in fields[6:] if f.startswith("F=")), 1)
            if flags & 4:          # AV_PKT_FLAG_DISCARD: the decoder drops it, no frame comes out
                continue
            pts.append(int(fields[2]))
            durations.append(int(fields[3]))
            keys.append(bool(flags & 1))
    if not pts:
        raise VideoError(path, "no video frames")
    order = np.argsort(pts, kind="stable")           # packets come in decoding order; frames in display order
    tick = numerator / denominator
    timestamps = np.asarray(pts, dtype=np.float64)[order] * tick
    keyframes = np.flatnonzero(np.asarray(keys)[order])
    if len(keyframes) == 0 or keyframes[0] != 0:
        keyframes = np.concatenate([[0], keyframes])
    last_duration = durations[order[-1]] * tick
    fps = timed_rate(timestamps, last_duration)
    if fps is None:              # one frame: only the header's nominal rate says anything
        match = re.search(r"Video:.*?, ([\d.]+) fps", result.stderr.decode(errors="replace"))
        fps = float(match.group(1)) if match else None
    return VideoInfo(len(timestamps), fps, timestamps, keyframes.astype(np.int64))


def timed_rate(timestamps: np.ndarray, last_duration: float = 0.0) -> Optional[float]:
    """Frames per second of real time: the frame count over the span the timestamps cover (first frame's
    start to last frame's end), not the container's nominal rate. A variable-frame-rate video (a phone's) has
    no single rate; this one keeps its duration when its frames are written one for one at a constant rate
    (docs/inference.md, "Frame timing"). ``last_duration`` is how long the last frame shows; 0 or less: the
    median interval. None for fewer than two distinct timestamps."""
    intervals = np.diff(timestamps)
    if len(timestamps) < 2 or timestamps[-1] <= timestamps[0]:
        return None
    if last_duration <= 0:
        last_duration = float(np.median(intervals[intervals > 0]))
    return len(timestamps) / float(timestamps[-1] - timestamps[0] + last_duration)


def probe_video(path: str, frame_shape: Optional[Sequence[int]] = None) -> VideoInfo:
    """Frame count (and fps) without decoding frames; a bad video is a VideoError naming it and the problem.

    Frame folders are only listed, so a corrupt frame inside one shows only when it is read; a strip's PNG
    checksums are verified (cheap: no pixels decoded) and a JPEG strip must end with its end marker.
    """
    kind = video_kind(path)
    if kind is None or not os.path.exists(path):
        raise VideoError(path, "not found" if not os.path.exists(path) else
                         f"not a video (expected a frame folder or {'/'.join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)})")
    if kind == "frames":
        count = len(list_frames(path))
        if count == 0:
            raise VideoError(path, "no png/jpg frames in the folder")
        return VideoInfo(count)
    if kind == "ffmpeg":
        return _probe_ffmpeg(path)
    if kind == "gif":
        return GifVideo(path).info
    return StripVideo(path, frame_shape, verify=True).info


def open_video(path: str | os.PathLike, frame_shape: Optional[Sequence[int]] = None,
               info: Optional[VideoInfo] = None) -> "Video":
    """The video at ``path`` (any format above); frames are resized to ``frame_shape`` (H, W[, C]) if given."""
    path = os.fspath(path)
    kind = video_kind(path)
    if not os.path.exists(path):
        raise VideoError(path, "not found")
    if kind == "frames":
        return FolderVideo(path, frame_shape, info)
    if kind == "ffmpeg":
        return FfmpegVideo(path, frame_shape, info)
    if kind == "gif":
        return GifVideo(path, frame_shape)
    if kind == "strip":
        return StripVideo(path, frame_shape)
    raise VideoError(path, f"not a video (expected a frame folder or {'/'.join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)})")


# ----------------------------------------------------------------------------------------------------------
# The formats

class Video:
    """Frames addressed by index and decoded on demand; subclasses implement ``_read_sorted`` and ``_frames``."""

    path: str
    num_frames: int
    # frames per second of real time (``timed_rate``: count over the timestamps' span, not the nominal rate)
    fps: Optional[float] = None

    def __init__(self, path: str, frame_shape: Optional[Sequence[int]]):
        self.path = path
        self.name = video_name(path)
        self.size = _frame_size(frame_shape)     # (H, W) every frame comes out at, or None: as stored

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, {self.num_frames} frames)"

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.fps)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) -> uint8 (n, H, W, 3), decoding only those."""
        indices = [int(i) for i in indices]
        for index in indices:
            if not 0 <= index < self.num_frames:
                raise IndexError(f"{self.path}: frame {index} out of range (the video has {self.num_frames})")
        if not indices:
            height, width = self.size or (0, 0)
            return np.zeros((0, height, width, 3), np.uint8)
        wanted = sorted(set(indices))
        frames = dict(zip(wanted, self._read_sorted(wanted)))
        return self._stack([frames[i] for i in indices])

    def iter_frames(self, batch: int = 1) -> Iterator[np.ndarray]:
        """All frames in order, ``batch`` at a time -> uint8 (b, H, W, 3) (the last batch may be shorter)."""
        if batch < 1:
            raise ValueError(f"batch must be positive, got {batch}")
        chunk = []
        for frame in self._frames():
            chunk.append(frame)
            if len(chunk) == batch:
                yield self._stack(chunk)
                chunk = []
        if chunk:
            yield self._stack(chunk)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Frames one by one in order -> uint8 (H, W, 3)."""
        for chunk in self.iter_frames(1):
            yield chunk[0]

    def read_all(self) -> np.ndarray:
        """The whole video -> uint8 (T, H, W, 3)."""
        return np.concatenate(list(self.iter_frames(64)))

    # -- for subclasses

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        return resize_frame(frame, self.size) if self.size else frame

    def _stack(self, frames: list[np.ndarray]) -> np.ndarray:
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise VideoError(self.path, f"frames of different sizes ({', '.join(sorted(map(str, shapes)))}); "
                                        f"give a frame_shape to resize them")
        return np.stack(frames)

    def _read_sorted(self, indices: list[int]) -> list[np.ndarray]:
        raise NotImplementedError

    def _frames(self) -> Iterator[np.ndarray]:
        raise NotImplementedError


class FolderVideo(Video):
    """A folder of frame images: reading decodes only the requested files."""

    def __init__(self, path: str, frame_shape: Optional[Sequence[int]] = None, info: Optional[VideoInfo] = None):
        super().__init__(path, frame_shape)
        self.files = [os.path.join(path, name) for name in list_frames(path)]
        self.num_frames = len(self.files)
        if not self.files:
            raise VideoError(path, "no png/jpg frames in the folder")
        if info is not None and info.num_frames != self.num_frames:
            raise VideoError(path, f"has {self.num_frames} frames but had {info.num_frames} when indexed")

    def _read_sorted(self, indices: list[int]) -> list[np.ndarray]:
        return [self._fit(load_image(self.files[i])) for i in indices]

    def _frames(self) -> Iterator[np.ndarray]:
        for file in self.files:
            yield self._fit(load_image(file))


class StripVideo(Video):
    """Frames side by side in one image (FOMM's png format); the whole image is decoded for any frame."""

    def __init__(self, path: str, frame_shape: Optional[Sequence[int]] = None, verify: bool = False):
        super().__init__(path, frame_shape)
        try:
            with Image.open(path) as image:
                width, height = image.size
                if verify:
                    image.verify()       # PNG: every chunk's CRC, without inflating pixels
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise VideoError(path, f"cannot decode the image ({_first_line(error)})") from None
        if verify and os.path.splitext(path)[1].lower() != ".png":
            with open(path, "rb") as stream:
                stream.seek(max(0, os.path.getsize(path) - 64))
                if b"\xff\xd9" not in stream.read():
                    raise VideoError(path, "truncated JPEG (no end marker)")
        # Without a frame shape the frames are taken as square, the common case.
        frame_height, frame_width = self.size or (height, height)
        if height != frame_height or width % frame_width:
            raise VideoError(path, f"a {width}x{height} image is not a strip of {frame_width}x{frame_height} "
                                   f"frames side by side (the height must match, the width be a multiple)")
        self.frame_width = frame_width
        self.num_frames = width // frame_width
        self.size = None                 # frames are cut at their exact size: nothing to resize

    def _decode(self) -> np.ndarray:
        return load_image(self.path)

    def _read_sorted(self, indices: list[int]) -> list[np.ndarray]:
        strip, w = self._decode(), self.frame_width
        return [strip[:, i * w:(i + 1) * w].copy() for i in indices]

    def _frames(self) -> Iterator[np.ndarray]:
        # One image: the strip is in memory while its frames stream out.
        strip, w = self._decode(), self.frame_width
        for i in range(self.num_frames):
            yield strip[:, i * w:(i + 1) * w].copy()


class GifVideo(Video):
    """A GIF, decoded by Pillow (which composites each frame onto the previous ones as the format says)."""

    def __init__(self, path: str, frame_shape: Optional[Sequence[int]] = None):
        super().__init__(path, frame_shape)
        try:
            with Image.open(path) as image:
                self.num_frames = int(getattr(image, "n_frames", 1))
                # each frame's own delay (ms): a GIF's frames need not show equally long
                delays = []
                for index in range(self.num_frames):
                    image.seek(index)
                    delays.append(float(image.info.get("duration") or 0))
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise VideoError(path, f"cannot decode the GIF ({_first_line(error)})") from None
        if all(delays):
            starts = np.concatenate([[0.0], np.cumsum(delays[:-1])]) / 1000
            self.fps = timed_rate(starts, delays[-1] / 1000) if len(delays) > 1 else 1000.0 / delays[0]
        else:                            # a frame without a delay: the GIF says nothing about time
            self.fps = None

    def _decode(self, wanted: Optional[set[int]]) -> Iterator[tuple[int, np.ndarray]]:
        try:
            with Image.open(self.path) as image:
                last = max(wanted) if wanted else self.num_frames - 1
                for index in range(last + 1):
                    image.seek(index)
                    if wanted is None or index in wanted:
                        yield index, self._fit(_image_to_rgb(image.convert("RGB")))
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise VideoError(self.path, f"cannot decode the GIF ({_first_line(error)})") from None

    def _read_sorted(self, indices: list[int]) -> list[np.ndarray]:
        return [frame for _, frame in self._decode(set(indices))]

    def _frames(self) -> Iterator[np.ndarray]:
        for _, frame in self._decode(None):
            yield frame


class FfmpegVideo(Video):
    """An mp4/mov file: ``read`` seeks (see the module docstring), iteration streams through one ffmpeg."""

    def __init__(self, path: str, frame_shape: Optional[Sequence[int]] = None, info: Optional[VideoInfo] = None):
        super().__init__(path, frame_shape)
        if info is None or info.timestamps is None:
            info = _probe_ffmpeg(path)
        self._info = info
        self.num_frames = info.num_frames
        self.fps = info.fps

    @property
    def info(self) -> VideoInfo:
        return self._info

    def _decode_run(self, start: int, count: int) -> np.ndarray:
        """``count`` frames from frame ``start`` on -> uint8 (count, h, w, 3) as stored."""
        seek = []
        if start > 0:
            # Halfway to the previous frame: robust to rounding, and ffmpeg outputs from the first frame at
            # or after it. Both this and the probe's timestamps are relative to the file's start time.
            stamps = self._info.timestamps
            seek = ["-ss", f"{(stamps[start] + stamps[start - 1]) / 2:.6f}"]
        # One decoder thread: these runs are short, where frame threading costs more than it gives (a 2-frame
        # read of a 256x256 clip: 46 ms instead of 63), and DataLoader workers are the parallelism.
        result = _ffmpeg(["-threads", "1", *seek, "-i", self.path, "-map", "0:v:0", *every_stored_frame(),
                          "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        if result.returncode != 0:
            raise VideoError(self.path, f"cannot decode the video ({_ffmpeg_problem(result.stderr)})")
        output = result.stderr.decode(errors="replace").split("Output #0", 1)[-1]
        match = re.search(r"Video: rawvideo.*?, (\d+)x(\d+)", output)
        if not match:
            raise VideoError(self.path, "ffmpeg did not report the decoded frame size")
        width, height = int(match.group(1)), int(match.group(2))
        frames = np.frombuffer(result.stdout, np.uint8)
        decoded = len(frames) // (width * height * 3)
        if decoded < count:
            raise VideoError(self.path, f"frame {start + decoded} could not be decoded (the container lists "
                                        f"{self.num_frames} frames)")
        return frames[:count * width * height * 3].reshape(count, height, width, 3)

    def _read_sorted(self, indices: list[int]) -> list[np.ndarray]:
        keyframes = self._info.keyframes
        # Runs of frames one ffmpeg process decodes in order: a new run (a seek) starts only where a keyframe
        # after the current position lets ffmpeg skip enough frames to pay for the new process.
        runs = [[indices[0]]]
        for index in indices[1:]:
            keyframe = keyframes[np.searchsorted(keyframes, index, side="right") - 1]
            if keyframe - runs[-1][-1] > SEEK_MIN_SKIP:
                runs.append([index])
            else:
                runs[-1].append(index)
        frames = []
        for run in runs:
            decoded = self._decode_run(run[0], run[-1] - run[0] + 1)
            frames += [self._fit(decoded[i - run[0]]) for i in run]
        return frames

    def _frames(self) -> Iterator[np.ndarray]:
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(self.path, output_params=["-map", "0:v:0", *every_stored_frame()])
        try:
            try:
                meta = next(reader)
            except (OSError, RuntimeError) as error:
                raise VideoError(self.path, f"cannot decode the video ({_ffmpeg_problem(str(error).encode())})") \
                    from None
            width, height = meta["size"]
            while True:
                try:
                    data = next(reader)
                except StopIteration:
                    return
                except RuntimeError as error:
                    raise VideoError(self.path, f"cannot decode the video "
                                                f"({_ffmpeg_problem(str(error).encode())})") from None
                yield self._fit(np.frombuffer(data, np.uint8).reshape(height, width, 3))
        finally:
            reader.close()


# ----------------------------------------------------------------------------------------------------------
# Writing

WRITABLE_EXTENSIONS = (".mp4", ".mov", ".gif")


def has_audio(path: str) -> bool:
    """Whether an ffmpeg-readable file carries an audio stream (frame folders and images never do)."""
    if not os.path.isfile(path) or os.path.splitext(path)[1].lower() not in FFMPEG_EXTENSIONS:
        return False
    result = _ffmpeg(["-i", path, "-map", "0:a:0?", "-c", "copy", "-t", "0", "-f", "null", "-"])
    return bool(re.search(r"Stream #0:\d+.*: Audio:", result.stderr.decode(errors="replace")))


class VideoWriter:
    """Frames streamed to ffmpeg as they come (memory does not grow with the video), optionally with the audio
    track of another file; the result appears under its name only when complete and verified.

        with VideoWriter("out.mp4", fps=25, audio_from="driving.mp4") as writer:
            for batch in batches:                 # uint8 (n, H, W, 3) or (H, W, 3)
                writer.write(batch)

    The encoder writes a hidden partial file beside the result (``modules.core.outputs.partial_path``). When the
    block ends, ffmpeg's exit status is checked and the file's frame count is read back; only then is it
    renamed over the result. Any failure (an exception, Ctrl-C, SIGTERM, a full disk) removes the partial
    file, leaves whatever was at the result's name untouched and raises one plain line (a ``VideoError``).
    The result holds exactly one video stream and, with ``audio_from``, that file's first audio stream.
    """

    def __init__(self, path: str | os.PathLike, fps: float, audio_from: Optional[str] = None, quality: int = 8):
        from modules.core.outputs import partial_path

        self.path = os.fspath(path)
        extension = os.path.splitext(self.path)[1].lower()
        if extension not in WRITABLE_EXTENSIONS:
            raise VideoError(self.path, f"cannot write {extension or 'a file without extension'} (expected "
                                        f"{', '.join(WRITABLE_EXTENSIONS)})")
        if not fps or fps <= 0:
            raise VideoError(self.path, f"fps must be positive, got {fps}")
        self.partial = partial_path(self.path)
        self.fps, self.quality, self.extension = float(fps), quality, extension
        self.audio_from = audio_from if audio_from and extension != ".gif" and has_audio(audio_from) else None
        self.frames = 0
        self._process: Optional[subprocess.Popen] = None
        self._log = None                          # ffmpeg's stderr, in a temporary file (a pipe could fill up)
        self._size: Optional[tuple[int, int]] = None

    def __enter__(self) -> "VideoWriter":
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        return self

    def _command(self, height: int, width: int) -> list[str]:
        import imageio_ffmpeg

        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", f"{self.fps:.6g}",
                   "-i", "-"]
        if self.audio_from:
            command += ["-i", self.audio_from]
        # Explicit maps: exactly the frames, and the driver's first audio stream if it has one.
        command += ["-map", "0:v:0"] + (["-map", "1:a:0", "-c:a", "aac"] if self.audio_from else ["-an"])
        if self.extension == ".gif":
            command += ["-c:v", "gif", "-pix_fmt", "rgb8"]
        else:
            # libx264 at imageio's quality scale (8 of 10 = crf 10); yuv420p needs even sides: pad, never resize.
            command += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(int((1 - self.quality / 10) * 51))]
            if height % 2 or width % 2:
                command += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        return command + ["-f", {".mp4": "mp4", ".mov": "mov", ".gif": "gif"}[self.extension], self.partial]

    def _open(self, height: int, width: int) -> None:
        import tempfile

        self._log = tempfile.TemporaryFile()
        # start_new_session: a Ctrl-C in the terminal reaches this process, which then stops ffmpeg itself,
        # instead of ffmpeg dying first and the error looking like a broken pipe.
        self._process = subprocess.Popen(self._command(height, width), stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        self._size = (height, width)

    def write(self, frames: np.ndarray) -> None:
        """uint8 frames (n, H, W, 3) or one (H, W, 3); every frame of a video must have the same size."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (n, H, W, 3), got {frames.dtype} {frames.shape}")
        if self._process is None:
            self._open(*frames.shape[1:3])
        elif frames.shape[1:3] != self._size:
            raise ValueError(f"frame size {frames.shape[1:3]} differs from the video's {self._size}")
        try:
            self._process.stdin.write(np.ascontiguousarray(frames).tobytes())
        except (BrokenPipeError, OSError):
            self._process.wait()
            raise self._failure() from None
        self.frames += len(frames)

    def _failure(self) -> VideoError:
        """Why ffmpeg stopped, in plain words."""
        self._log.seek(0)
        text = self._log.read().decode(errors="replace")
        if "No space left" in text:
            reason = "no space left on the disk"
        elif "Permission denied" in text:
            reason = "permission denied"
        elif "Read-only file system" in text:
            reason = "the file system is read-only"
        elif "Disk quota" in text:
            reason = "the disk quota is exceeded"
        else:
            reason = f"the video encoder failed (exit status {self._process.returncode})"
        return VideoError(self.path, f"cannot write the video: {reason}; nothing was written there")

    def _finish(self) -> None:
        """Close ffmpeg's input, wait for it, check its exit status and read the frame count back."""
        try:
            self._process.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        if self._process.wait() != 0:
            raise self._failure()
        try:
            written = probe_video(self.partial).num_frames
        except VideoError:
            written = 0
        if written != self.frames:
            raise VideoError(self.path, f"the written video holds {written} frames instead of {self.frames}; "
                                        f"nothing was written there")

    def _stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is None:
                if self._process is None:
                    raise VideoError(self.path, "no frames to write")
                self._finish()
                os.replace(self.partial, self.path)
        except BaseException:
            self._stop()
            raise
        finally:
            self._stop()                 # on an exception or a signal: ffmpeg is killed, not waited for
            if self._log is not None:
                self._log.close()
            if os.path.exists(self.partial):
                os.remove(self.partial)
