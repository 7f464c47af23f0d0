"""The web page's work without a browser (modules/app/page.py, modules/app/files.py): uploads accepted or refused
with one-line errors, the animation itself (the command line's animate_single), per-session folders, the
models offered (face models first) and the bundled examples (the one that suits the default model first)."""
import filecmp
import os
import shutil

import numpy as np
import pytest
import torch

import modules.app.files as app_files
from modules.app.files import (FACE_EXAMPLE, REAL_FACES, SYNTHETIC, Limits, Storage, check_driving, check_source,
                               describe_model, list_models, ordered_examples)
from modules.app.page import DEFAULT_MOTION, Animator, Request, build_page, bypass_proxy, motion_choices, write_examples
from modules.core.errors import UserError
from modules.data.video_io import VideoWriter, open_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEATMAP = os.path.join(ROOT, "models", "tiny-heatmap.pth.tar")
CIRCLES = os.path.join(ROOT, "models", "tiny-circles.pth.tar")


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return write_examples(str(tmp_path_factory.mktemp("examples")))


@pytest.fixture(scope="module")
def example(examples):
    return examples[SYNTHETIC]


@pytest.fixture(scope="module")
def face_models(tmp_path_factory):
    """faces-heatmap and faces-circles model files: the tiny models with a face config (landmarks: face)."""
    from modules.core.files import atomic_save, read_checkpoint

    folder, made = tmp_path_factory.mktemp("faces"), {}
    for name, tiny in (("faces-heatmap.pth.tar", HEATMAP), ("faces-circles.pth.tar", CIRCLES)):
        checkpoint = read_checkpoint(tiny)
        checkpoint["config"]["metrics_params"]["landmarks"] = "face"
        made[name] = str(folder / name)
        atomic_save(checkpoint, made[name])
    return made


@pytest.fixture
def animator(tmp_path):
    storage = Storage(str(tmp_path / "app"))
    return Animator(storage, Limits(upload_mb=5, frames=100), device="cpu")


def test_the_bundled_example_is_the_demo_pair(example):
    source, driving = example
    assert os.path.basename(source) == "synthetic-id032-00.png"
    video = open_video(driving)
    assert video.num_frames == 48 and video.read([0]).shape == (1, 64, 64, 3)


def test_animating_the_example_gives_the_driving_frame_count_side_by_side_and_sheet(animator, example):
    reports = []
    result = animator.animate("sessionA", Request(HEATMAP, *example), report=lambda d, t: reports.append((d, t)))
    assert result.frames == 48
    assert open_video(result.video).num_frames == 48
    side = open_video(result.side_by_side)
    assert side.num_frames == 48 and side.read([0]).shape[2] == 4 * 64      # source | driving | mask | result
    from PIL import Image

    with Image.open(result.sheet) as sheet:
        assert sheet.size == (8 * 64, 4 * 64)
    assert reports[-1] == (48, 48) and len(reports) == 6                     # one report per batch of 8
    assert "absolute motion" in result.log and "sessionA" in os.path.basename(result.video)
    folder = os.path.join(animator.storage.sessions, "sessionA")
    assert os.path.dirname(result.video) == folder                           # everything in the session's folder
    again = animator.animate("sessionA", Request(HEATMAP, *example))
    assert again.video != result.video and os.path.isfile(result.video)      # a second run keeps the first


def test_the_page_runs_what_the_command_line_runs(animator, example, tmp_path):
    """Same model, inputs and options: the page's result is the command line's, frame for frame."""
    from modules.inference.pipeline import AnimationOptions, animate_single

    page = animator.animate("s1", Request(CIRCLES, *example, smooth=2.0))
    line = animate_single(CIRCLES, *example, AnimationOptions(result_video=str(tmp_path / "cli.mp4"), smooth=2.0),
                          device=torch.device("cpu"))
    frames = list(range(48))
    assert np.array_equal(open_video(page.video).read(frames), open_video(line).read(frames))


def test_sessions_are_separate_and_ending_one_removes_only_its_files(animator, example):
    a = animator.animate("alpha", Request(HEATMAP, *example))
    cached = os.path.join(animator.storage.gradio, "0123abcd")              # a copy Gradio made of a result
    os.makedirs(cached)
    shutil.copyfile(a.video, os.path.join(cached, os.path.basename(a.video)))
    folder_b = animator.storage.session("beta")
    animator.end("alpha")
    assert not os.path.exists(os.path.dirname(a.video)) and not os.path.exists(cached)
    assert os.path.isdir(folder_b)
    with pytest.raises(UserError, match="not a session id"):
        animator.storage.session("../escape")
    animator.storage.remove()
    assert not os.path.exists(animator.storage.root)


def _frameless_mp4(path):
    with open(path, "wb") as stream:
        stream.write(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom")       # a header and nothing else
    return str(path)


@pytest.mark.parametrize("case, message", [
    ("corrupt image", "source image broken.png: not an image Pillow can read"),
    ("text as image", "source image notes.txt: expected one of .png, .jpg, .jpeg"),
    ("no source", "source image: nothing uploaded"),
    ("frameless video", "driving video empty.mp4:"),
    ("long video", "driving video long.mp4: 120 frames, over the 100-frame limit (--max_frames)"),
    ("big image", "source image big.png: 5.2 MB, over the 5 MB limit (--max_upload_mb)"),
    ("relative heatmap", "--motion relative: "),
    ("broken model", "broken.pth.tar: "),
])
def test_bad_uploads_and_options_are_one_line_errors(animator, example, tmp_path, case, message):
    source, driving = example
    model, motion = HEATMAP, DEFAULT_MOTION
    if case == "corrupt image":
        source = str(tmp_path / "broken.png")
        open(source, "wb").write(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    elif case == "text as image":
        source = str(tmp_path / "notes.txt")
        open(source, "w").write("hello")
    elif case == "no source":
        source = None
    elif case == "frameless video":
        driving = _frameless_mp4(tmp_path / "empty.mp4")
    elif case == "long video":
        driving = str(tmp_path / "long.mp4")
        with VideoWriter(driving, fps=25) as writer:
            writer.write(np.zeros((120, 64, 64, 3), np.uint8))
    elif case == "big image":
        source = str(tmp_path / "big.png")
        open(source, "wb").write(b"\0" * int(5.2 * 2 ** 20))
    elif case == "relative heatmap":
        motion = "relative"
    elif case == "broken model":
        model = str(tmp_path / "broken.pth.tar")
        open(model, "wb").write(b"not a checkpoint")
    with pytest.raises(UserError) as raised:
        animator.animate("s", Request(model, source, driving, motion=motion))
    text = str(raised.value)
    assert message in text and "\n" not in text
    results = [name for name in os.listdir(animator.storage.session("s")) if "result" in name]
    assert results == []                                                     # nothing half-written is left


def test_models_listed_shipped_first_and_a_folders_files_with_their_problems(tmp_path):
    shipped = list_models(None)
    names = [os.path.basename(info.path) for info in shipped]
    assert names[:3] == ["faces-heatmap.pth.tar", "faces-circles.pth.tar", "tiny-heatmap.pth.tar"]
    assert "tiny-circles.pth.tar" in names
    assert "tiny-detector.pth.tar" not in names and "synthetic-keypoint-regressor.pth" not in names
    run = tmp_path / "run1"
    run.mkdir()
    shutil.copyfile(CIRCLES, run / "00000001-checkpoint.pth.tar")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    listed = list_models(str(tmp_path))[len(shipped):]
    assert [os.path.basename(info.path) for info in listed] == ["junk.pth", "00000001-checkpoint.pth.tar"]
    assert listed[0].problem and "does not load" in listed[0].describe()
    assert listed[1].relative and motion_choices(listed[1]) == [DEFAULT_MOTION, "relative", "absolute"]
    assert motion_choices(describe_model(HEATMAP)) == [DEFAULT_MOTION, "absolute"]
    with pytest.raises(UserError, match="--models .*: not a folder"):
        list_models(str(tmp_path / "missing"))


def test_loopback_bypasses_the_proxy(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "example.org")
    monkeypatch.delenv("no_proxy", raising=False)
    bypass_proxy("0.0.0.0")
    for variable in ("NO_PROXY", "no_proxy"):
        names = os.environ[variable].split(",")
        assert {"127.0.0.1", "localhost", "0.0.0.0"} <= set(names)
    assert os.environ["NO_PROXY"].startswith("example.org,")


@pytest.mark.parametrize("argv, text", [(["--port", "0"], "--port"), (["--max_upload_mb", "-3"], "--max_upload_mb")])
def test_bad_app_flags_are_refused_by_the_parser(argv, text, capsys):
    from run import main

    with pytest.raises(SystemExit) as raised:
        main(["--mode", "app", *argv])
    assert raised.value.code == 2 and text in capsys.readouterr().err


def test_a_missing_models_folder_is_a_one_line_error_before_the_server_starts(capsys):
    from run import main

    assert main(["--mode", "app", "--models", "/no/such/folder"]) == 2
    assert "--models /no/such/folder: not a folder" in capsys.readouterr().err


def test_a_port_in_use_is_a_one_line_error_and_the_temporary_folder_goes(capsys):
    import glob
    import socket
    import tempfile

    from run import main

    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "kpmask-app-*")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--mode", "app", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"--host 127.0.0.1 --port {port}: cannot serve there" in err and "Traceback" not in err
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "kpmask-app-*"))) == before


def _shipped_names(folder, files: dict[str, str]) -> list[str]:
    """The basenames list_models offers when models/ holds ``files`` (name: the file it links to)."""
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    for name, target in files.items():
        os.symlink(target, os.path.join(folder, name))
    return [os.path.basename(info.path) for info in list_models(None)]


def test_face_models_lead_the_list_and_tiny_heatmap_leads_without_them(tmp_path, monkeypatch, face_models):
    monkeypatch.setattr(app_files, "SHIPPED", str(tmp_path))
    tiny = {"a-circles.pth.tar": CIRCLES, "tiny-circles.pth.tar": CIRCLES, "tiny-heatmap.pth.tar": HEATMAP}
    assert _shipped_names(tmp_path, {**tiny, **face_models}) == [
        "faces-heatmap.pth.tar", "faces-circles.pth.tar", "tiny-heatmap.pth.tar", "a-circles.pth.tar",
        "tiny-circles.pth.tar"]
    circles_only = {**tiny, "faces-circles.pth.tar": face_models["faces-circles.pth.tar"]}
    assert _shipped_names(tmp_path, circles_only)[:2] == ["faces-circles.pth.tar", "tiny-heatmap.pth.tar"]
    assert _shipped_names(tmp_path, tiny) == ["tiny-heatmap.pth.tar", "a-circles.pth.tar", "tiny-circles.pth.tar"]
    assert not list_models(None)[0].face


def test_the_default_example_suits_the_default_model(face_models):
    face, synthetic = describe_model(face_models["faces-heatmap.pth.tar"]), describe_model(HEATMAP)
    assert face.face and not synthetic.face and face.kind == synthetic.kind
    pairs = {SYNTHETIC: ("s.png", "d.mp4"), REAL_FACES: ("f.jpg", "f.mp4")}
    assert [name for name, _ in ordered_examples(pairs, face)] == [REAL_FACES, SYNTHETIC]
    assert [name for name, _ in ordered_examples(pairs, synthetic)] == [SYNTHETIC, REAL_FACES]
    assert [name for name, _ in ordered_examples(pairs, None)] == [SYNTHETIC, REAL_FACES]
    only = {SYNTHETIC: pairs[SYNTHETIC]}                          # examples/faces missing: nothing else to offer
    assert ordered_examples(only, face) == [(SYNTHETIC, pairs[SYNTHETIC])]


def test_the_real_face_example_is_the_repositorys_pair_and_passes_the_pages_checks(examples):
    source, driving = examples[REAL_FACES]
    assert [os.path.relpath(path, ROOT) for path in FACE_EXAMPLE] == [
        os.path.join("examples", "faces", "lp-s12.jpg"), os.path.join("examples", "faces", "lp-d18.mp4")]
    for copy, original in zip((source, driving), FACE_EXAMPLE):
        assert os.path.basename(copy) == os.path.basename(original) and filecmp.cmp(copy, original, shallow=False)
    check_source(source, "lp-s12.jpg")
    assert check_driving(driving, "lp-d18.mp4", Limits()) == 128               # within the page's default limits
    assert open_video(driving).read([0]).shape == (1, 480, 480, 3)


def test_without_examples_faces_only_the_synthetic_example_is_offered(tmp_path, monkeypatch):
    monkeypatch.setattr(app_files, "FACE_EXAMPLE", (str(tmp_path / "gone.jpg"), str(tmp_path / "gone.mp4")))
    offered = write_examples(str(tmp_path / "examples"))
    assert list(offered) == [SYNTHETIC] and all(os.path.isfile(path) for path in offered[SYNTHETIC])


def _page_examples(page) -> tuple[list[list[str]], str]:
    """The rows of the page's bundled examples (file names as shown) and the page's text."""
    components = [component["props"] for component in page.config["components"]]
    rows = [props["samples"] for props in components if props.get("elem_id") == "example"]
    text = " ".join(str(props.get("value")) for props in components if isinstance(props.get("value"), str))
    assert len(rows) == 1
    return rows[0], text


def test_the_page_offers_both_examples_the_default_models_first(examples, face_models, animator, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", animator.storage.gradio)
    faces, synthetic = ["lp-s12.jpg", "lp-d18.mp4"], ["synthetic-id032-00.png", "synthetic-id038-00.mp4"]
    face = describe_model(face_models["faces-heatmap.pth.tar"])
    rows, text = _page_examples(build_page(animator, [face, describe_model(HEATMAP)], examples))
    assert rows == [faces, synthetic]
    # the notice names what each shipped family animates: faces-* real faces, tiny-* the synthetic figures
    assert text.index("models/faces-*") < text.index("**real faces**") < text.index("models/tiny-*") < \
        text.index("**synthetic figures**")
    rows, _ = _page_examples(build_page(animator, [describe_model(HEATMAP), face], examples))
    assert rows == [synthetic, faces]
