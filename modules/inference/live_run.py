"""``--mode live`` on the command line: the driving stream (raw frames on standard input, a camera, or a
recorded clip played at its own rate), where the animation goes (a window where a display exists, a video file,
or raw frames on standard output) and Ctrl-C, which ends the stream with the result so far completed.

The animation itself is modules/inference/live.py's LiveAnimator (stream_animation fed with the newest frame);
this module reads the input in a thread of its own, so that frames that come while the model works replace
each other in the one-slot buffer instead of queueing in a pipe.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import warnings
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch

from modules.core.errors import UserError
from modules.core.outputs import check_output_file
from modules.data.video_io import WRITABLE_EXTENSIONS, VideoError, VideoWriter, load_image, open_video
from modules.inference.live import Arrival, LatestFrame, LiveAnimator, LiveSettings, LiveStats, Show
from modules.inference.pipeline import check_framing, prepare_model

CAMERA_SIZE = (640, 480)     # a camera's capture size unless --size says otherwise (every webcam offers it)
STDOUT = "-"                 # --driving_video - (raw frames in) and --result_video - (raw frames out)


@dataclasses.dataclass
class LiveOptions(LiveSettings):
    """``--mode live``'s flags beyond the animation's: result ('-': raw rgb24 frames on standard output; None: a
    window where a display exists, else ``<source>-live.mp4``); size (width, height) of raw input frames or the
    camera's capture size; rate the frame rate of raw input and the camera; precision/engine/config_path as
    ``prepare_model``."""
    result: Optional[str] = None
    size: Optional[tuple[int, int]] = None
    overwrite: bool = False
    precision: Optional[str] = None
    engine: Optional[str] = None
    config_path: Optional[str] = None


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height), both positive."""
    parts = text.lower().split("x")
    if len(parts) == 2 and all(part.isdigit() and int(part) > 0 for part in parts):
        return int(parts[0]), int(parts[1])
    raise UserError(f"--size {text}: expected WIDTHxHEIGHT in pixels, e.g. 640x480")


def is_camera(path: str) -> bool:
    """A character device such as /dev/video0 (a camera that ffmpeg reads with v4l2)."""
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def raw_frames(fd: int, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """rgb24 frames of ``size`` (width, height) read from file descriptor ``fd`` until it ends; a cut last frame
    is an error naming the byte count. Read with os.read, not through sys.stdin.buffer: a reader thread still
    blocked there when Ctrl-C ends the run would hold the buffer's lock through the interpreter's shutdown."""
    width, height = size
    length = width * height * 3
    while True:
        data = bytearray()
        while len(data) < length:
            chunk = os.read(fd, length - len(data))
            if not chunk:
                break
            data += chunk
        if not data:
            return
        if len(data) < length:
            raise UserError(f"--driving_video -: the input ended inside a frame ({len(data)} of {length} bytes of a "
                            f"{width}x{height} rgb24 frame); is --size {width}x{height} the frames' size?")
        yield np.frombuffer(bytes(data), np.uint8).reshape(height, width, 3)


def paced(frames: Iterable[np.ndarray], fps: float) -> Iterator[np.ndarray]:
    """``frames`` at ``fps``: each one no sooner than its time (a recorded clip played like a camera)."""
    start = time.perf_counter()
    for index, frame in enumerate(frames):
        delay = start + index / fps - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield frame


def camera_frames(device: str, size: tuple[int, int], fps: float) -> tuple[Iterator[np.ndarray], Callable]:
    """A camera's frames through ffmpeg's v4l2 input, scaled to ``size``; returns them and a stop function."""
    import imageio_ffmpeg

    width, height = size
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "v4l2",
               "-framerate", f"{fps:g}", "-video_size", f"{width}x{height}", "-i", device,
               "-vf", f"scale={width}:{height}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    # start_new_session: Ctrl-C reaches this process, which ends the stream; ffmpeg is stopped afterwards.
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)

    def frames() -> Iterator[np.ndarray]:
        yield from raw_frames(process.stdout.fileno(), size)
        if process.wait() != 0:
            problem = process.stderr.read().decode(errors="replace").strip().splitlines()
            raise UserError(f"--driving_video {device}: ffmpeg cannot read the camera "
                            f"({problem[-1] if problem else f'exit status {process.returncode}'})")

    def stop() -> None:
        if process.poll() is None:
            process.kill()
            process.wait()

    return frames(), stop


def open_input(driving: str, options: LiveOptions) -> tuple[Iterator[np.ndarray], float, Callable[[], None]]:
    """The driving stream: raw frames on standard input ('-'), a camera device, or a recorded video played at its
    own frame rate. Returns the frames (H, W, 3), their rate and a function that stops the source."""
    if driving == STDOUT:
        return raw_frames(sys.stdin.fileno(), options.size), options.rate, lambda: None
    if is_camera(driving):
        frames, stop = camera_frames(driving, options.size or CAMERA_SIZE, options.rate)
        return frames, options.rate, stop
    try:
        video = open_video(driving)
    except VideoError as error:
        raise UserError(f"--driving_video {driving}: {error.problem}") from None
    fps = video.fps or options.rate
    return paced((batch[0] for batch in video.iter_frames(1)), fps), fps, lambda: None


def feed(frames: Iterator[np.ndarray], slot: LatestFrame, stop: threading.Event) -> threading.Thread:
    """The reader thread: every frame of ``frames`` into ``slot`` as it comes (so a slow model drops frames
    instead of letting them queue in a pipe), then ``slot.close()``; a failure is kept in ``slot.error``."""

    def read() -> None:
        try:
            for frame in frames:
                if stop.is_set():
                    break
                slot.put(frame)
        except BaseException as error:          # noqa: BLE001 (raised again by the model's thread)
            slot.error = error
        finally:
            slot.close()

    thread = threading.Thread(target=read, name="kpmask-live-input", daemon=True)
    thread.start()
    return thread


class VideoOutput:
    """Animated frames into a video at the input's rate, in the input's time: a frame that was dropped shows
    the animation before it, so the file plays as long as the stream ran."""

    def __init__(self, writer: VideoWriter):
        self.writer, self.previous, self.index = writer, None, -1

    def show(self, frame: np.ndarray, arrival: Arrival) -> None:
        if self.previous is not None and arrival.index - self.index > 1:
            self.writer.write(np.repeat(self.previous[None], arrival.index - self.index - 1, axis=0))
        self.writer.write(frame)
        self.previous, self.index = frame, arrival.index


class RawOutput:
    """Animated frames as raw rgb24 on a binary stream (standard output), each once, as soon as it is out."""

    def __init__(self, stream, stop: threading.Event):
        self.stream, self.stop = stream, stop

    def show(self, frame: np.ndarray, arrival: Arrival) -> None:
        try:
            self.stream.write(np.ascontiguousarray(frame).tobytes())
            self.stream.flush()
        except (BrokenPipeError, OSError):       # the reader went away: end as if interrupted
            self.stop.set()


class WindowOutput:
    """Animated frames in a Tk window (the standard library's; closing it or Escape ends the stream)."""

    def __init__(self, title: str, stop: threading.Event):
        import tkinter

        self.tkinter, self.root = tkinter, tkinter.Tk()
        self.root.title(title)
        self.label = tkinter.Label(self.root)
        self.label.pack()
        self.root.protocol("WM_DELETE_WINDOW", stop.set)
        self.root.bind("<Escape>", lambda event: stop.set())
        self.image = None

    def show(self, frame: np.ndarray, arrival: Arrival) -> None:
        height, width = frame.shape[:2]
        ppm = b"P6 %d %d 255\n" % (width, height) + np.ascontiguousarray(frame).tobytes()
        self.image = self.tkinter.PhotoImage(data=base64.b64encode(ppm).decode("ascii"), format="PPM")
        self.label.configure(image=self.image)
        self.root.update()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.root.destroy()


def display_available() -> bool:
    """A window can be opened: a display is named and Tk is installed."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        import tkinter  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C sets ``stop`` (the stream ends and the result so far is completed); a second one is
    the usual KeyboardInterrupt (partial files removed)."""

    def first(signum, frame) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    try:
        previous = signal.signal(signal.SIGINT, first)
    except ValueError:                          # not the main thread: nothing to install
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def default_live_result(source_image: str) -> str:
    return os.path.splitext(os.path.basename(source_image))[0] + "-live.mp4"


def check_live_arguments(source_image: str, driving: str, checkpoint_path: str, options: LiveOptions) -> str:
    """What can be refused before anything is loaded; returns where the frames go ('window', '-' or a file)."""
    if not os.path.isfile(source_image):
        raise UserError(f"{source_image}: not an image file (--source_image)")
    if driving == STDOUT and options.size is None:
        raise UserError("--driving_video - reads raw rgb24 frames from standard input: give their size with "
                        "--size WIDTHxHEIGHT (and their rate with --fps)")
    if driving != STDOUT and not os.path.exists(driving):
        raise UserError(f"{driving}: not found (--driving_video: a video file or frame folder, a camera such as "
                        f"/dev/video0, or - for raw frames on standard input)")
    if options.precision == "int8":
        raise UserError("--mixed_precision int8 calibrates on the driving video's first frames, which a live "
                        "stream has not sent yet; use auto, no or bf16")
    check_framing(options.fit, (("--crop", options.crop), ("--driving_crop", options.driving_crop)))
    if not 0 < options.rate < float("inf"):
        raise UserError(f"--fps {options.rate:g}: expected a positive frame rate")
    if options.result == STDOUT:
        return STDOUT
    if options.result is None and display_available():
        return "window"
    result = options.result or default_live_result(source_image)
    check_output_file(result, what="--result_video", inputs=(source_image, driving, checkpoint_path,
                                                              options.config_path),
                      overwrite=options.overwrite, extensions=WRITABLE_EXTENSIONS)
    return result


def animate_live(checkpoint_path: str, source_image: str, driving: str, options: Optional[LiveOptions] = None, *,
                 device: torch.device) -> tuple[LiveStats, LatestFrame]:
    """``--mode live``: animate ``source_image`` by the stream ``driving`` until it ends or Ctrl-C, into a window,
    a video file or standard output (``options.result``); prints frames animated, dropped and the latency
    percentiles, and returns the statistics and the slot (its ``received`` and ``dropped`` counts)."""
    o = options or LiveOptions()
    target = check_live_arguments(source_image, driving, checkpoint_path, o)
    # Raw frames on standard output: every line this command prints goes to standard error instead.
    log = sys.stderr if target == STDOUT else sys.stdout
    frame_output = sys.stdout.buffer if target == STDOUT else None
    with contextlib.redirect_stdout(log):
        photo = load_image(source_image)
        prepared = prepare_model(checkpoint_path, device, precision=o.precision, engine=o.engine,
                                 config_path=o.config_path, batch_size=1)     # one frame at a time
        frames, fps, stop_input = open_input(driving, o)
        animator = LiveAnimator(prepared, photo, source_image, dataclasses.replace(o, rate=fps), device)
        animator.warm_up()
        stop, slot = threading.Event(), LatestFrame()
        try:
            written = _run(animator, frames, slot, stop, target, fps, frame_output, driving)
        finally:
            stop.set()
            stop_input()
        slot.discard()
        if isinstance(slot.error, UserError):        # e.g. a cut last frame: what was animated is kept
            warnings.warn(f"{slot.error}; the stream ended there", UserWarning, stacklevel=2)
        elif slot.error is not None:
            raise slot.error
        print("live: " + animator.stats.line(slot.dropped) + f" of {slot.received} in"
              + (f"; {target}: {written} frames at {fps:g} fps" if written is not None else ""), flush=True)
    return animator.stats, slot


def _run(animator: LiveAnimator, frames: Iterator[np.ndarray], slot: LatestFrame, stop: threading.Event,
         target: str, fps: float, frame_output, driving: str) -> Optional[int]:
    """The reader thread started, the model loop in this thread until the stream ends or Ctrl-C; returns the
    number of frames written to a video file (None for a window or standard output)."""
    what = {"window": "a window", STDOUT: "standard output"}.get(target, target)

    def animate(show: Show) -> None:
        feed(frames, slot, stop)
        print(f"live: animating {driving} into {what} (Ctrl-C ends)", flush=True)
        animator.run(slot, show, stop)
        if animator.stats.animated == 0 and slot.error is not None:
            raise slot.error                        # the input failed at once (a camera ffmpeg cannot open)

    with stop_on_interrupt(stop):
        if target not in ("window", STDOUT):
            with VideoWriter(target, fps=fps) as writer:
                animate(VideoOutput(writer).show)
            return writer.frames
        output = WindowOutput(f"kpmask live: {animator.photo_name}", stop) if target == "window" \
            else RawOutput(frame_output, stop)
        try:
            animate(output.show)
        finally:
            if isinstance(output, WindowOutput):
                output.close()
    return None
