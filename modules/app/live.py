"""The web page's "Live" tab: the browser's camera moves a photo, animated on the server as the frames come.

Gradio's streaming webcam input sends a frame every STREAM_EVERY seconds; the handler puts it into the browser
session's one-slot buffer and returns at once with the newest animated frame (or nothing new), so neither
Gradio's queue nor the buffer ever holds old frames: when the model is slower than the camera, frames are
dropped on the server, never queued (modules/inference/live.py). Each session's model loop runs in a thread of
its own (``LiveSession``), which ends when the tab closes, when no frame came for IDLE_S seconds (a session
opened through the raw API never sends the tab-close event), or when a newer session needs its place
(MAX_SESSIONS). Animated frames travel as JPEG data addresses inside an HTML image: no file per frame.
"""

import collections
import dataclasses
import os
import sys
import threading
from typing import Optional

import numpy as np

from modules.app.files import Limits, Storage, accept_upload, check_source, describe_model
from modules.core.errors import UserError
from modules.data.video_io import IMAGE_EXTENSIONS

STREAM_EVERY = 0.05          # seconds between camera frames sent by the browser (20 per second at most)
WAIT_S = 0.1                 # how long a frame's handler waits for a newer animation before answering
IDLE_S = 30.0                # a session without frames for this long ends its thread
MAX_SESSIONS = 4             # live sessions at once (each a model loop on the server's cores); the oldest yields
MODELS_KEPT = 2              # prepared models kept for the next session (loading one takes seconds)
CROPS = ("auto", "none")


@dataclasses.dataclass(frozen=True)
class LiveRequest:
    """What one session animates: the model, the source photo (an uploaded path), ``--smooth``'s strength and
    the crop of both the photo and the camera ('auto' or 'none')."""
    model: str
    photo: Optional[str]
    smooth: float = 0.0
    crop: str = "auto"


class LiveSessions:
    """The page's live sessions by browser session id, each a LiveSession with the request that started it."""

    def __init__(self, storage: Storage, limits: Limits, device: str = "auto"):
        self.storage, self.limits, self.device = storage, limits, device
        self.sessions: "collections.OrderedDict[str, tuple[LiveRequest, object]]" = collections.OrderedDict()
        self.shown: dict[str, int] = {}               # the last animated frame handed to each session
        self.models: "collections.OrderedDict[str, object]" = collections.OrderedDict()
        self.lock = threading.Lock()

    def frame(self, session_id: str, frame: np.ndarray, request: LiveRequest) -> tuple[Optional[np.ndarray], str]:
        """Offer one camera frame (H, W, 3); returns the newest animated frame if there is a new one (None
        otherwise) and the status line. A UserError (bad photo, a model that cannot smooth) ends the session."""
        live = self._session(session_id, request)
        if live.error is not None:
            self.end(session_id)
            error = live.error
            raise error if isinstance(error, UserError) else UserError(f"unexpected {type(error).__name__}: {error}")
        live.offer(np.ascontiguousarray(frame[..., :3]))
        image, count = live.latest(self.shown.get(session_id, 0), WAIT_S)
        fresh = count > self.shown.get(session_id, 0)
        self.shown[session_id] = count
        return (image if fresh else None), self.status(live)

    @staticmethod
    def status(live) -> str:
        if live.animator is None:
            return "loading the model ..."
        crop = "; ".join(live.animator.crop_lines).replace("--crop", "photo crop").replace("--driving_crop",
                                                                                          "camera crop")
        return f"{live.summary()}. Reference {live.animator.references}: {crop}"

    def take_reference(self, session_id: str) -> None:
        with self.lock:
            entry = self.sessions.get(session_id)
        if entry is not None:
            entry[1].take_reference()

    def end(self, session_id: str) -> None:
        """Stop the session's thread (waiting for it) and say what it did in the server's log."""
        with self.lock:
            entry = self.sessions.pop(session_id, None)
            self.shown.pop(session_id, None)
        if entry is not None:
            entry[1].close()
            print(f"live session ended: {entry[1].summary()}", file=sys.stderr, flush=True)

    def end_all(self) -> None:
        for session_id in list(self.sessions):
            self.end(session_id)

    def _session(self, session_id: str, request: LiveRequest):
        """The running session for this request; a new one when the request changed or the last one ended."""
        with self.lock:
            entry = self.sessions.get(session_id)
            current = entry is not None and entry[0] == request and (entry[1].alive or entry[1].error is not None)
        if current:
            return entry[1]
        self.end(session_id)
        while len(self.sessions) >= MAX_SESSIONS:
            self.end(next(iter(self.sessions)))
        from modules.inference.live import LiveSession

        live = LiveSession(lambda: self._animator(session_id, request), IDLE_S)
        with self.lock:
            self.sessions[session_id] = (request, live)
            self.shown[session_id] = 0
        return live

    def _animator(self, session_id: str, request: LiveRequest):
        """In the session's thread: the photo accepted and the model prepared (or reused)."""
        from modules.core.device import choose_device
        from modules.data.video_io import load_image
        from modules.inference.live import LiveAnimator, LiveSettings

        info = describe_model(request.model)
        if info.problem:
            raise UserError(info.problem)
        if request.crop not in CROPS:
            raise UserError(f"crop {request.crop!r}: expected one of {', '.join(CROPS)}")
        photo = accept_upload(request.photo, "source photo", IMAGE_EXTENSIONS, self.limits,
                              self.storage.session(session_id), f"{session_id}-live-source")
        check_source(photo, os.path.basename(request.photo))
        device = choose_device(self.device)
        settings = LiveSettings(crop=request.crop, driving_crop=request.crop, smooth=request.smooth,
                                rate=1 / STREAM_EVERY)
        return LiveAnimator(self._model(request.model, device), load_image(photo), os.path.basename(request.photo),
                            settings, device)

    def _model(self, path: str, device):
        from modules.inference.pipeline import prepare_model

        with self.lock:
            prepared = self.models.get(path)
        if prepared is None:
            prepared = prepare_model(path, device, batch_size=1)      # one frame at a time
            with self.lock:
                self.models[path] = prepared
                while len(self.models) > MODELS_KEPT:
                    self.models.popitem(last=False)
        return prepared


def build_live_tab(gr, sessions: LiveSessions, choices: list, default_model: Optional[str],
                   default_photo: Optional[str]) -> None:
    """The "Live" tab's controls and events (inside an open ``gr.Tab``)."""
    gr.Markdown("Allow the camera and press the record button: the photo moves as you do. Relative motion "
                "(circles models) starts from the pose you hold when the stream starts, or when you press "
                "**Take reference**; frames the model has no time for are skipped, never queued.")
    with gr.Row():
        model = gr.Dropdown(choices, value=default_model, label="Model", elem_id="live-model", scale=2)
        photo = gr.Image(value=default_photo, type="filepath", sources=["upload"], label="Source photo",
                         elem_id="live-source", height=200)
    with gr.Row():
        smooth = gr.Slider(0, 8, value=0, step=0.5, label="Smooth the keypoints (0: off; circles models)")
        crop = gr.Radio(list(CROPS), value="auto", label="Crop the photo and the camera", elem_id="live-crop")
        reference = gr.Button("Take reference", elem_id="live-reference")
    with gr.Row():
        camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Camera", elem_id="live-camera")
        animated = gr.HTML("", label="Animated", elem_id="live-result", min_height=240)
    status = gr.Markdown("", elem_id="live-status")

    def streamed(frame, model_path, photo_path, strength, crop_setting, request: gr.Request):
        if frame is None:
            return gr.skip(), gr.skip()
        from modules.inference.live import jpeg_data_url

        try:
            image, line = sessions.frame(request.session_hash, frame,
                                         LiveRequest(model_path, photo_path, float(strength), crop_setting))
        except UserError as error:
            raise gr.Error(str(error), print_exception=False) from None
        shown = gr.skip() if image is None else \
            f'<img alt="animated" style="width: 100%; max-width: 480px" src="{jpeg_data_url(image)}">'
        return shown, line

    camera.stream(streamed, [camera, model, photo, smooth, crop], [animated, status], stream_every=STREAM_EVERY,
                  concurrency_limit=None, show_progress="hidden")
    def rebase(request: gr.Request) -> None:
        sessions.take_reference(request.session_hash)

    reference.click(rebase, None, None)
