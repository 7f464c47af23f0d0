"""The web page: ``kpmask --mode app [--host 127.0.0.1] [--port 7860] [--models FOLDER]``.

A local page (Gradio, the field's convention for model demos) where a user picks a model, uploads or picks a
source image and a driving video, chooses what the model allows, and gets the result video, the side-by-side
video (source | driving | mask or keypoints | result) and a contact sheet of it. The page calls
``modules.inference.pipeline.animate_single``, the code ``--mode animate`` runs: the same crop, engines, smoothing and one-line
errors, streamed in batches, whose progress the page's bar shows.

Served on the loopback address by default; no share link, no telemetry (GRADIO_ANALYTICS_ENABLED=False),
and requests to the server's own address bypass any HTTP proxy of the environment. Uploads are bounded
(``--max_upload_mb``, ``--max_frames``) and copied into a per-session folder that is removed when the tab
closes (modules/app/files.py).
"""

import contextlib
import dataclasses
import io
import os
import sys
import traceback
import warnings
from typing import Optional

from modules.app.files import (REAL_FACES, SYNTHETIC, Limits, ModelInfo, Storage, accept_upload, check_driving,
                               check_source, copy_face_example, describe_model, list_models, ordered_examples)
from modules.app.live import LiveSessions, build_live_tab
from modules.core.errors import UserError
from modules.data.video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

DEFAULT_MOTION = "the model's default"
ENGINES = ("auto", "torch", "torch-opt", "onnxruntime", "openvino")
PRECISIONS = ("auto", "no", "bf16", "int8")
NOTICE = (
    "The shipped `models/faces-*` models animate **real faces**: 128x128, trained on ten real talking-head "
    "videos (docs/faces.md); `Crop the source: auto` frames the face with dlib. The shipped "
    "`models/tiny-*` models animate the **synthetic figures** of this project's generated dataset only "
    "(`scripts/synthetic_dataset.py`), on which they were trained, on a CPU. Bodies, or faces in more variety, "
    "need a model trained on more real data (VoxCeleb, Tai-Chi-HD; docs/training.md): start the page with "
    "`kpmask --mode app --models FOLDER` to offer its checkpoints here.")
EXAMPLE_NOTES = {REAL_FACES: "a real portrait and talking head (examples/faces; for the faces-* models)",
                 SYNTHETIC: "the synthetic test pair (for the tiny-* models)"}


@dataclasses.dataclass
class AppOptions:
    """How the server runs (the command line's --host, --port, --models, --max_upload_mb, --max_frames)."""
    host: str = "127.0.0.1"
    port: int = 7860
    models: Optional[str] = None
    limits: Limits = dataclasses.field(default_factory=Limits)
    device: str = "auto"


@dataclasses.dataclass
class Request:
    """One click on "Animate": the model, the two uploads and the options (the command line's flags)."""
    model: str
    source: Optional[str]
    driving: Optional[str]
    motion: str = DEFAULT_MOTION
    adapt_scale: bool = False
    find_best_frame: bool = False
    crop: str = "auto"
    driving_crop: str = "auto"
    paste_back: bool = True
    smooth: float = 0.0
    engine: Optional[str] = None      # None: the command line's default ($KPMASK_ENGINE, else auto)
    precision: Optional[str] = None   # None: $KPMASK_PRECISION, else auto


@dataclasses.dataclass
class Result:
    """What one animation gives the page."""
    video: str                 # the result (the source photo's size when pasted back)
    side_by_side: str          # source | driving | mask or keypoints | result
    sheet: str                 # the side-by-side's columns as rows, 8 frames across (png)
    frames: int
    log: str                   # what the command line would have printed (engine, crop, warnings)


class Animator:
    """The page's work, free of Gradio: accept one session's uploads and animate them with animate_single."""

    def __init__(self, storage: Storage, limits: Limits, device: str = "auto"):
        self.storage, self.limits, self.device = storage, limits, device
        self.runs: dict[str, int] = {}

    def animate(self, session: str, request: Request, report=None) -> Result:
        """Raises UserError (one line) for anything the user can fix."""
        from modules.core.device import choose_device
        from modules.inference.pipeline import AnimationOptions, animate_single

        folder = self.storage.session(session)
        info = describe_model(request.model)
        if info.problem:
            raise UserError(info.problem)
        source = accept_upload(request.source, "source image", IMAGE_EXTENSIONS, self.limits, folder,
                               f"{session}-source")
        driving = accept_upload(request.driving, "driving video", VIDEO_EXTENSIONS, self.limits, folder,
                                f"{session}-driving")
        check_source(source, os.path.basename(request.source))
        frames = check_driving(driving, os.path.basename(request.driving), self.limits)
        self.runs[session] = run = self.runs.get(session, 0) + 1
        result = os.path.join(folder, f"{session}-result-{run}.mp4")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            options = AnimationOptions(
                result_video=result, motion=None if request.motion == DEFAULT_MOTION else request.motion,
                adapt_scale=request.adapt_scale, find_best_frame=request.find_best_frame, visualize=True,
                overwrite=True, engine=request.engine, precision=request.precision, crop=request.crop,
                driving_crop=request.driving_crop, paste=request.paste_back, smooth=request.smooth)
            animate_single(request.model, source, driving, options, device=choose_device(self.device), report=report)
        side = result[:-len(".mp4")] + "-side-by-side.mp4"
        sheet = write_sheet(side, result[:-len(".mp4")] + "-sheet.png")
        log = printed.getvalue() + "".join(f"WARNING: {w.message}\n" for w in caught
                                           if issubclass(w.category, UserWarning))
        return Result(result, side, sheet, frames, log.replace(folder + os.sep, "").strip())

    def end(self, session: str) -> None:
        self.runs.pop(session, None)
        self.storage.end_session(session)


def write_sheet(side_by_side: str, path: str) -> str:
    """A contact sheet of the side-by-side video (8 frames, read without decoding the rest) as ``path``."""
    import numpy as np
    from PIL import Image

    from modules.core.pictures import contact_sheet, sheet_frames
    from modules.data.video_io import open_video

    video = open_video(side_by_side)
    picked = sheet_frames(video.num_frames)
    frames = video.read(picked)                                  # (8, H, columns*W, 3)
    columns = max(1, round(frames.shape[2] / frames.shape[1]))
    Image.fromarray(contact_sheet(np.ascontiguousarray(frames), columns, len(picked))).save(path)
    return path


def motion_choices(info: ModelInfo) -> list[str]:
    return [DEFAULT_MOTION, "relative", "absolute"] if info.relative else [DEFAULT_MOTION, "absolute"]


def build_page(animator: Animator, models: list[ModelInfo], examples: dict[str, tuple[str, str]],
               live: Optional[LiveSessions] = None):
    """The Gradio Blocks of the page (not launched): the "Animate a video" tab and the "Live" tab (modules/app/
    live.py); ``examples`` by name (write_examples), shown with the one that suits the default model first."""
    import gradio as gr

    live = live or LiveSessions(animator.storage, animator.limits, animator.device)
    choices = [(info.label + ("  (does not load)" if info.problem else ""), info.path) for info in models]
    first = models[0] if models else None
    with gr.Blocks(title="kpmask: image animation with keypoint masks", analytics_enabled=False,
                   delete_cache=(600, 3600)) as page:
        gr.Markdown("# Image animation with keypoint masks\nOne source image, moved like a driving video "
                    "(Toledano, Marmor, Gertz).\n\n" + NOTICE)
        with gr.Tab("Animate a video", id="animate-tab"):
            with gr.Row():
                model = gr.Dropdown(choices, value=first.path if first else None, label="Model", scale=2)
                about = gr.Markdown(first.describe() if first else "No model: start with --models FOLDER.")
            with gr.Row():
                source = gr.File(label="Source image", file_types=list(IMAGE_EXTENSIONS), elem_id="source")
                driving = gr.File(label="Driving video", file_types=list(VIDEO_EXTENSIONS), elem_id="driving")
            shown = ordered_examples(examples, first)
            if shown:
                gr.Examples([list(pair) for _, pair in shown], [source, driving], elem_id="example",
                            label="Bundled examples: " + "; then ".join(EXAMPLE_NOTES[name] for name, _ in shown))
            with gr.Accordion("Options", open=False):
                options = _option_controls(gr, first)           # Request's fields from motion to precision
            run = gr.Button("Animate", variant="primary", elem_id="animate")
            with gr.Row():
                result = gr.Video(label="Result", elem_id="result", autoplay=True, loop=True, height=360)
                side = gr.Video(label="Side by side: source | driving | mask or keypoints | result",
                                elem_id="side", loop=True, height=360)
            sheet = gr.Image(label="Contact sheet (the side-by-side's columns, 8 frames across)", elem_id="sheet")
            log = gr.Textbox(label="What ran", lines=4, elem_id="log")

        with gr.Tab("Live", id="live-tab", elem_id="live-tab"):
            build_live_tab(gr, live, choices, first.path if first else None, _live_photo(examples, first))

        def chosen(path):
            info = describe_model(path)
            return info.describe(), gr.update(choices=motion_choices(info), value=DEFAULT_MOTION)

        def ended(request: gr.Request):
            live.end(request.session_hash)
            animator.end(request.session_hash)

        model.change(chosen, model, [about, options[0]])
        run.click(_click_handler(gr, animator), [model, source, driving, *options], [result, side, sheet, log],
                  concurrency_limit=1)
        page.unload(ended)
    return page


def _live_photo(examples: dict[str, tuple[str, str]], model: Optional[ModelInfo]) -> Optional[str]:
    """The Live tab's first photo: the source image of the bundled example that suits the default model."""
    shown = ordered_examples(examples, model)
    return shown[0][1][0] if shown else None


def _option_controls(gr, first: Optional[ModelInfo]) -> list:
    """The options of one animation, in Request's field order (motion ... precision)."""
    from modules.inference.engines import default_engine

    with gr.Row():
        motion = gr.Radio(motion_choices(first) if first else [DEFAULT_MOTION], value=DEFAULT_MOTION,
                          label="Motion")
        adapt = gr.Checkbox(False, label="Adapt scale (relative motion)")
        best = gr.Checkbox(False, label="Find the best reference frame (relative motion)")
    with gr.Row():
        crop = gr.Radio(["auto", "none"], value="auto", label="Crop the source")
        driving_crop = gr.Radio(["auto", "none"], value="auto", label="Crop the driving video")
        paste = gr.Checkbox(True, label="Paste the result back into the photo")
    with gr.Row():
        smooth = gr.Slider(0, 8, value=0, step=0.5, label="Smooth the driving keypoints (0: off)")
        # the command line's defaults ($KPMASK_ENGINE, $KPMASK_PRECISION, else auto)
        engine = gr.Dropdown(list(ENGINES), value=default_engine(), label="Engine")
        precision = gr.Dropdown(list(PRECISIONS), value=os.environ.get("KPMASK_PRECISION", "auto"),
                                label="Precision")
    return [motion, adapt, best, crop, driving_crop, paste, smooth, engine, precision]


def _click_handler(gr, animator: Animator):
    """The "Animate" button's function: one Request to the animator, its errors as the page's error line."""

    def click(path, src, drv, how, adapt_scale, find_best, crop_setting, driving_setting, paste_back,
              strength, engine_name, precision_name, request: gr.Request, progress=gr.Progress()):
        def report(done: int, total: int) -> None:
            progress((done, total), desc="animating", unit="frames")

        ask = Request(path, _path(src), _path(drv), how, adapt_scale, find_best, crop_setting, driving_setting,
                      paste_back, float(strength), engine_name, precision_name)
        try:
            done = animator.animate(request.session_hash, ask, report)
        except UserError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:                             # noqa: BLE001 (shown, and logged in full)
            traceback.print_exc()
            raise gr.Error(f"unexpected {type(error).__name__}: {error} (the server's log has the "
                           f"traceback)", print_exception=False) from None
        return done.video, done.side_by_side, done.sheet, done.log

    return click


def _path(value) -> Optional[str]:
    """A gr.File value (a path, or an object with .name in older releases) as a path."""
    if value is None or isinstance(value, str):
        return value
    return getattr(value, "name", None) or getattr(value, "path", None)


def write_example(folder: str) -> tuple[str, str]:
    """The bundled example: the synthetic dataset's demo pair (``make demo``'s), rendered into ``folder``."""
    from PIL import Image

    from modules.data.synthetic import demo_pair
    from modules.data.video_io import VideoWriter

    os.makedirs(folder, exist_ok=True)
    name, source, driving = demo_pair()
    source_id, driving_id = (part.replace("#", "-") for part in name.split("__"))
    source_path = os.path.join(folder, f"synthetic-{source_id}.png")
    driving_path = os.path.join(folder, f"synthetic-{driving_id}.mp4")
    Image.fromarray(source).save(source_path)
    with VideoWriter(driving_path, fps=25) as writer:
        writer.write(driving)
    return source_path, driving_path


def write_examples(folder: str) -> dict[str, tuple[str, str]]:
    """The page's bundled examples by name, in ``folder``: the real-face pair (when the repository has
    examples/faces) and the synthetic demo pair."""
    examples = {SYNTHETIC: write_example(folder)}
    faces = copy_face_example(folder)
    if faces is not None:
        examples[REAL_FACES] = faces
    return examples


def bypass_proxy(host: str) -> None:
    """Requests to this server (Gradio's start-up check, the tests' browser) must not go through a proxy."""
    names = {host, "127.0.0.1", "localhost", "::1"}
    for variable in ("NO_PROXY", "no_proxy"):
        present = [n for n in os.environ.get(variable, "").split(",") if n]
        os.environ[variable] = ",".join(present + sorted(names - set(present)))


def serve(options: AppOptions) -> None:
    """Build the page and serve it until interrupted; the temporary root is removed on the way out."""
    models = list_models(options.models)
    if not models:
        raise UserError("no model to offer: models/ holds none that animates; pass --models FOLDER")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"        # before the import: no telemetry, no version check
    try:
        import gradio as gr
    except ImportError:
        raise UserError("--mode app needs Gradio: pip install -e .[app] (make install does)") from None
    storage = Storage()
    os.environ["GRADIO_TEMP_DIR"] = storage.gradio           # Gradio's cache inside the app's root
    bypass_proxy(options.host)
    live = LiveSessions(storage, options.limits, options.device)
    try:
        examples = write_examples(os.path.join(storage.root, "examples"))
        page = build_page(Animator(storage, options.limits, options.device), models, examples, live)
        page.queue(default_concurrency_limit=1)
        print(f"serving on http://{options.host}:{options.port} (Ctrl-C stops; files under {storage.root})",
              file=sys.stderr)
        try:
            page.launch(server_name=options.host, server_port=options.port, share=False, ssr_mode=False,
                        max_file_size=f"{options.limits.upload_mb:g}mb", allowed_paths=[storage.root],
                        theme=gr.themes.Default(font=["sans-serif"], font_mono=["monospace"]), quiet=True,
                        footer_links=[], show_error=True)
        except OSError as error:                                  # the port is taken, the host is not ours
            raise UserError(f"--host {options.host} --port {options.port}: cannot serve there "
                            f"({str(error).splitlines()[0]})") from None
    finally:
        live.end_all()
        storage.remove()
