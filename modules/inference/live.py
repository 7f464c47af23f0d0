"""Live animation: a photo moved by a camera, or by any stream of frames, as the frames arrive.

    kpmask --mode live --checkpoint models/faces-heatmap.pth.tar --source_image photo.jpg --driving_video /dev/video0
    ffmpeg -i clip.mp4 -f rawvideo -pix_fmt rgb24 - | kpmask --mode live --checkpoint ... --source_image photo.jpg \\
        --driving_video - --size 640x360 --result_video live.mp4

Frames are dropped, never queued. Whatever produces frames (the command line's reader thread, the web page's
stream handler) puts each one into a one-slot buffer (``LatestFrame``), replacing the frame there if the model
has not taken it yet; the model loop takes the newest frame whenever it is free. When the model is slower than
the camera the frames in between are skipped, so the latency (frame in to frame out) stays within about two
model steps instead of growing with every frame behind, and the animation shows the present pose.

One pipeline: the frames go through ``stream_animation`` (modules/inference/pipeline.py), the code ``--mode
animate`` runs, one frame per batch. Relative motion (circles and FOMM models; keypoint-mask paper sec. 2.2) is
anchored on a reference frame: the stream's first frame, as ``--mode animate`` uses the driving video's first
frame, or on the web page the frame held when "take reference" is pressed. ``--crop auto`` frames the subject
in the reference frame, once per reference (a box that followed the subject would cancel its motion;
modules/inference/crop.py).

The command line's inputs and outputs are modules/inference/live_run.py; the web page runs a ``LiveSession``
(this module) per browser tab, its model loop in a thread of its own.
"""
from __future__ import annotations

import base64
import collections
import dataclasses
import threading
import time
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from modules.inference.crop import crop_to, plan_crops
from modules.inference.pipeline import Prepared, choose_motion, fit_frame, steadier, stream_animation

POLL_S = 0.1                 # how often a waiting model loop looks at its stop and reference flags
LATENCY_WINDOW = 10_000      # latencies kept for the percentiles (a long session's memory stays bounded)
WARM_UP_FRAMES = 64          # at most, before the stream: enough for --engine auto's race (12 turns of 1 frame)

Show = Callable[[np.ndarray, "Arrival"], None]      # one animated frame (H, W, 3) and the frame it animates


# ----------------------------------------------------------------------------------------------------------
# Dropping: the one-slot buffer and what it measures

@dataclasses.dataclass
class Arrival:
    """One frame of the stream: its pixels (H, W, 3) uint8, its number (0 = the first, dropped ones counted)
    and when it was whole (``time.perf_counter()``)."""
    frame: np.ndarray
    index: int
    arrived: float


class LatestFrame:
    """A one-slot buffer between a producer of frames and the model: ``put`` replaces an untaken frame (and
    counts it dropped), ``take`` waits for the newest. Thread-safe; ``close`` says no more frames will come."""

    def __init__(self):
        self._ready = threading.Condition()
        self._frame: Optional[Arrival] = None
        self.received = 0
        self.dropped = 0
        self.closed = False
        self.error: Optional[BaseException] = None       # why the producer stopped early, if it failed

    def put(self, frame: np.ndarray) -> None:
        with self._ready:
            if self._frame is not None:
                self.dropped += 1
            self._frame = Arrival(frame, self.received, time.perf_counter())
            self.received += 1
            self._ready.notify()

    def take(self, timeout: float) -> Optional[Arrival]:
        """The newest frame not yet taken, waiting up to ``timeout`` s for one (None: none came, or closed)."""
        with self._ready:
            self._ready.wait_for(lambda: self._frame is not None or self.closed, timeout)
            arrival, self._frame = self._frame, None
            return arrival

    def close(self) -> None:
        with self._ready:
            self.closed = True
            self._ready.notify_all()

    def discard(self) -> None:
        """At the end: a frame still waiting was never animated, so it counts as dropped."""
        with self._ready:
            if self._frame is not None:
                self.dropped += 1
                self._frame = None


class LiveStats:
    """Frames animated and their latency, from the moment a frame was whole to the moment its animation was
    out (written, shown or handed to the page); percentiles over the last LATENCY_WINDOW frames."""

    def __init__(self):
        self.animated = 0
        self.latencies: collections.deque = collections.deque(maxlen=LATENCY_WINDOW)   # seconds
        self.first: Optional[float] = None
        self.last: Optional[float] = None

    def record(self, arrival: Arrival, done: float) -> None:
        self.animated += 1
        self.latencies.append(done - arrival.arrived)
        self.first = arrival.arrived if self.first is None else self.first
        self.last = done

    def percentile_ms(self, share: float) -> float:
        return float(np.percentile(np.asarray(self.latencies), share) * 1000) if self.latencies else float("nan")

    def fps(self) -> float:
        """Animated frames per second, from the first frame in to the last frame out."""
        if self.animated < 2 or self.last is None or self.last <= self.first:
            return float("nan")
        return self.animated / (self.last - self.first)

    def line(self, dropped: int) -> str:
        return (f"{self.animated} frames animated, {dropped} dropped; latency median {self.percentile_ms(50):.0f} "
                f"ms, p95 {self.percentile_ms(95):.0f} ms (frame in to frame out); {self.fps():.1f} fps")


# ----------------------------------------------------------------------------------------------------------
# The model loop: stream_animation fed with the newest frame

@dataclasses.dataclass
class LiveSettings:
    """How a stream animates the photo (the command line's animate flags): motion/adapt_scale as
    ``--mode animate``; fit for a frame without a crop box; crop/driving_crop 'auto', 'none' or 'x,y,w,h'
    (the driving box found in, or checked against, each reference frame); paste the crop back into the photo;
    smooth ``--smooth``'s strength; rate the stream's nominal frames per second (smoothing's time base)."""
    motion: Optional[str] = None
    adapt_scale: bool = False
    fit: str = "crop"
    crop: str = "auto"
    driving_crop: str = "auto"
    paste: bool = True
    smooth: float = 0.0
    rate: float = 25.0


class _StillVideo:
    """A reference frame as a one-frame video, so that ``plan_crops`` frames the subject in it."""
    num_frames = 1

    def __init__(self, frame: np.ndarray):
        self.frame = frame

    def read(self, indices) -> np.ndarray:
        return np.stack([self.frame for _ in indices])


class _NoProgress:
    """stream_animation's progress, unseen (a stream has no total; and tqdm, even disabled, starts a monitor
    thread of its own)."""

    def update(self, n: int = 1) -> None:
        pass


class _Out:
    """stream_animation's writer: hands each animated frame to ``show`` and times it."""

    def __init__(self, show: Show, current: list, stats: LiveStats):
        self.show, self.current, self.stats = show, current, stats

    def write(self, frames: np.ndarray) -> None:
        arrival = self.current[0]
        self.show(frames[0], arrival)
        self.stats.record(arrival, time.perf_counter())


class LiveAnimator:
    """A prepared model animating one photo by the frames of a ``LatestFrame``, through ``stream_animation``.

    ``run`` takes the first frame as the reference and animates the newest frame each time the model is free,
    until ``stop`` is set, the slot is closed and empty, or (``idle_s``) no frame came for that long;
    ``rebase`` (the page's "take reference") ends the current stream and starts another whose reference is
    the next frame."""

    def __init__(self, prepared: Prepared, photo: np.ndarray, photo_name: str, settings: LiveSettings,
                 device: torch.device):
        self.prepared, self.photo, self.photo_name, self.settings, self.device = \
            prepared, photo, photo_name, settings, device
        path = prepared.checkpoint["path"]
        self.motion, self.adapt_scale = choose_motion(prepared.config, settings.motion, settings.adapt_scale, path)
        steadier(prepared.config, settings.smooth, settings.rate, path)          # refused now, not mid-stream
        self.stats = LiveStats()
        self.rebase = threading.Event()
        self.references = 0
        self.crop_lines: list[str] = []
        self.photo_crop: Optional[str] = None      # the photo's box once found ('x,y,w,h' or 'none')
        self.idle = False                   # the last run ended because no frame came for idle_s

    def warm_up(self) -> None:
        """Frames animated (the photo driving itself) before the stream starts: the first calls of a model
        allocate and choose kernels, and ``--engine auto`` races the engines on a run's first frames
        (modules/inference/choice.py; exports included, the first time): time that would otherwise land on the
        stream's first frames. Runs until the race, if any, has a winner."""
        size = self.prepared.config.dataset_params.size
        frame = fit_frame(self.photo, size, self.settings.fit)
        model = self.prepared.model

        def frames() -> Iterator[np.ndarray]:
            for _ in range(WARM_UP_FRAMES):
                yield frame[None]
                if getattr(model, "winner", True) is not None:       # no race, or decided
                    return

        with torch.inference_mode():
            stream_animation(model, frame, frames(), None, size=size, device=self.device, motion=self.motion,
                             adapt_scale=self.adapt_scale, progress=_NoProgress(), precision=self.prepared.precision)

    def run(self, slot: LatestFrame, show: Show, stop: threading.Event, idle_s: Optional[float] = None) -> None:
        with torch.inference_mode():        # thread-local: entered in the thread that animates
            while not stop.is_set():
                self.rebase.clear()
                first = self._next(slot, stop, idle_s)
                if first is not None:
                    self._stream(first, slot, show, stop, idle_s)
                if not self.rebase.is_set():
                    return

    def _next(self, slot: LatestFrame, stop: threading.Event, idle_s: Optional[float]) -> Optional[Arrival]:
        """The newest frame, or None when the stream should end (stopped, closed, idle, or a new reference)."""
        waiting = time.monotonic()
        while not stop.is_set() and not self.rebase.is_set():
            arrival = slot.take(POLL_S)
            if arrival is not None:
                return arrival
            if slot.closed:                 # the last frame may have come between the wait and the check
                return slot.take(0)
            if idle_s is not None and time.monotonic() - waiting > idle_s:
                self.idle = True
                return None
        return None

    def _stream(self, first: Arrival, slot: LatestFrame, show: Show, stop: threading.Event,
                idle_s: Optional[float]) -> None:
        """One reference: frame the subject in it, then animate the newest frames relative to it."""
        config, s = self.prepared.config, self.settings
        size = config.dataset_params.size
        plan = plan_crops(config, self.photo, self.photo_name, _StillVideo(first.frame), "the reference frame",
                          self.photo_crop or s.crop, s.driving_crop)
        # The photo does not move: its box is found once, and each later reference looks only at the camera.
        self.photo_crop = "none" if plan.source is None else str(plan.source)
        self.crop_lines, self.references = plan.lines, self.references + 1
        source = fit_frame(self.photo, size, s.fit) if plan.source is None else crop_to(self.photo, plan.source, size)

        def fitted(frame: np.ndarray) -> np.ndarray:
            return fit_frame(frame, size, s.fit) if plan.driving is None else crop_to(frame, plan.driving, size)

        current = [first]

        def batches() -> Iterator[np.ndarray]:
            arrival: Optional[Arrival] = first
            while arrival is not None:
                current[0] = arrival
                yield fitted(arrival.frame)[None]
                arrival = self._next(slot, stop, idle_s)

        path = self.prepared.checkpoint["path"]
        stream_animation(self.prepared.model, source, batches(), _Out(show, current, self.stats), size=size,
                         device=self.device, motion=self.motion, adapt_scale=self.adapt_scale,
                         progress=_NoProgress(), precision=self.prepared.precision,
                         reference=fitted(first.frame), smooth=steadier(config, s.smooth, s.rate, path),
                         paste=plan.paster(self.photo, s.paste),
                         use_relative_jacobian=config.animate_params.normalization_params.use_relative_jacobian)


# ----------------------------------------------------------------------------------------------------------
# The page's session: the model loop in a thread of its own

def name_thread(name: str) -> None:
    """Give the calling thread an operating-system name (Linux: /proc/PID/task/TID/comm, 15 characters), so
    that a live worker can be seen, and seen gone, from outside the process; a no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)       # 15 = PR_SET_NAME
    except (OSError, AttributeError):
        pass


class LiveSession:
    """One stream animated in a background thread (the web page: one per browser session).

    ``offer(frame)`` puts a camera frame into the slot and returns at once; ``latest()`` is the newest animated
    frame and its number; the thread loads the model (``load``), then runs a LiveAnimator until ``close`` or
    ``idle_s`` without frames. An error (a UserError: a model without keypoints asked to smooth, ...) is kept
    in ``error`` for the page to show."""

    THREAD_NAME = "kpmask-live"

    def __init__(self, load: Callable[[], LiveAnimator], idle_s: float):
        self.slot, self.stop = LatestFrame(), threading.Event()
        self.animator: Optional[LiveAnimator] = None
        self.error: Optional[BaseException] = None
        self._load, self._idle_s = load, idle_s
        self._done = threading.Condition()
        self._frame: Optional[np.ndarray] = None
        self.count = 0                      # animated frames handed out so far
        self.thread = threading.Thread(target=self._work, name=self.THREAD_NAME, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            self.animator = self._load()
            self.animator.warm_up()
            # Named once loaded: the helpers that loading starts for the whole process (an engine's own
            # threads) would inherit the name and outlive the session; the ones started from here end with it.
            name_thread(self.THREAD_NAME)
            self.animator.run(self.slot, self._show, self.stop, self._idle_s)
        except BaseException as error:              # noqa: BLE001 (kept for the page; the thread ends)
            self.error = error
        finally:
            self.slot.close()
            self.slot.discard()
            with self._done:
                self._done.notify_all()

    def _show(self, frame: np.ndarray, arrival: Arrival) -> None:
        with self._done:
            self._frame, self.count = frame, self.count + 1
            self._done.notify_all()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def offer(self, frame: np.ndarray) -> None:
        self.slot.put(frame)

    def latest(self, after: int = -1, wait_s: float = 0.0) -> tuple[Optional[np.ndarray], int]:
        """The newest animated frame and its number, waiting up to ``wait_s`` for one newer than ``after``."""
        with self._done:
            self._done.wait_for(lambda: self.count > after or not self.thread.is_alive(), wait_s)
            return self._frame, self.count

    def take_reference(self) -> None:
        if self.animator is not None:
            self.animator.rebase.set()

    def summary(self) -> str:
        if self.animator is None:
            return "loading the model"
        return self.animator.stats.line(self.slot.dropped)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and wait for it (its current frame finishes first)."""
        self.stop.set()
        self.slot.close()
        self.thread.join(timeout)


def jpeg_data_url(frame: np.ndarray, quality: int = 85) -> str:
    """A frame as a ``data:image/jpeg;base64,...`` address: shown by the page without a file per frame."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
