"""The output contract and the one-line errors, tried as a user would: every case runs the command line in a
subprocess and checks the exit status, a single ``error:`` line (the last on stderr, at most 400 characters, on
a line of its own, no traceback, no usage block), that the inputs are byte-identical afterwards, that no partial
file is left and that earlier results are kept."""
from __future__ import annotations

import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from conftest import ROOT, config_path, write_tiny
from PIL import Image

HEATMAP = os.path.join(ROOT, "models", "tiny-heatmap.pth.tar")
CIRCLES = os.path.join(ROOT, "models", "tiny-circles.pth.tar")
RUN = os.path.join(ROOT, "run.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


# ----------------------------------------------------------------------------------------------------------
# Helpers

def kpmask(*args: str, cwd=None, timeout: float = 180, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, RUN, "--device", "cpu", *args], cwd=cwd or ROOT, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def script(name: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *args], cwd=cwd or ROOT, env=ENV,
                          capture_output=True, text=True, timeout=180)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, status: int = 2) -> str:
    """The contract for a refused command: its status, and ``error: ...`` as the one error line, the last line
    of stderr, on a line of its own (not after a progress bar's carriage return), short and plain."""
    assert result.returncode == status, (result.returncode, result.stderr[-1500:])
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr, result.stderr[-1500:]
    lines = result.stderr.rstrip("\n").split("\n")
    last = lines[-1]
    assert last.startswith("error: "), result.stderr[-1500:]
    assert sum(line.lstrip("\r").startswith("error:") or "error: " in line for line in lines) == 1, result.stderr
    assert len(last) <= 400 and "\r" not in last
    for word in ("-map", "option", "FFMPEG", "0:v:0"):                 # plain words, no ffmpeg internals
        assert word not in last, last
    for fragment in fragments:
        assert fragment in last, last
    return last


def digest(*paths: str) -> dict[str, str]:
    """sha256 of every file under the paths (files or folders), to show they are byte-identical later."""
    found = {}
    for path in paths:
        files = [path] if os.path.isfile(path) else \
            [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]
        for file in files:
            with open(file, "rb") as stream:
                found[file] = hashlib.sha256(stream.read()).hexdigest()
    return found


def partials(folder: str) -> list[str]:
    return [os.path.join(d, n) for d, subdirs, files in os.walk(folder) for n in subdirs + files
            if ".partial" in n or ".old-" in n or n.endswith(".tmp")]


def make_video(path: str, frames: int = 24, audio: bool = True, size: int = 64) -> str:
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
               f"testsrc=size={size}x{size}:rate=24:duration={frames / 24}"]
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=frequency=300:duration={frames / 24}", "-c:a", "aac"]
    subprocess.run(command + ["-c:v", "libx264", "-pix_fmt", "yuv420p", path], check=True)
    return path


def streams(path: str) -> list[str]:
    """'Video' / 'Audio' for each stream ffmpeg finds in the file."""
    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path], capture_output=True,
                            text=True)
    return [kind for line in result.stderr.splitlines() if "Stream #" in line
            for kind in ("Video", "Audio") if f": {kind}:" in line]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    source = str(folder / "source.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(source)
    gif = str(folder / "source.gif")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(gif)
    return {"source": source, "gif": gif, "driving": make_video(str(folder / "driving.mp4")),
            "silent": make_video(str(folder / "silent.mp4"), audio=False),
            "long": make_video(str(folder / "long.mp4"), frames=2400, audio=False, size=64)}


def animate(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return kpmask("--mode", "animate", "--checkpoint", HEATMAP, *args, **kwargs)


# ----------------------------------------------------------------------------------------------------------
# Result files: never over an input, never over an existing file without --overwrite

def test_a_result_equal_to_an_input_is_refused_and_the_input_kept(tmp_path, media):
    driving = shutil.copy(media["driving"], tmp_path / "driving.mp4")
    gif = shutil.copy(media["gif"], tmp_path / "source.gif")
    link = tmp_path / "link.mp4"
    os.symlink(driving, link)
    hard = tmp_path / "hard.mp4"
    os.link(driving, hard)
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(frames / "0.png")
    model = shutil.copy(HEATMAP, tmp_path / "model.pth.tar")
    before = digest(str(tmp_path))
    cases = [
        (["--source_image", media["source"], "--driving_video", str(driving), "--result_video", str(driving),
          "--overwrite"], "an input of this command"),
        (["--source_image", str(gif), "--driving_video", str(driving), "--result_video", str(tmp_path / "source.gif"),
          "--overwrite"], "an input of this command"),
        (["--source_image", media["source"], "--driving_video", str(driving), "--result_video", str(link),
          "--overwrite"], "an input of this command"),                       # a symlink to the driving video
        (["--source_image", media["source"], "--driving_video", str(driving), "--result_video", str(hard),
          "--overwrite"], "an input of this command"),                       # a hard link to it
        (["--source_image", media["source"], "--driving_video", str(frames), "--result_video",
          str(frames / "out.mp4")], "inside an input"),                      # into the driving frame folder
    ]
    for args, fragment in cases:
        assert_one_line_error(animate(*args), fragment)
    result = kpmask("--mode", "animate", "--checkpoint", model, "--source_image", media["source"], "--driving_video",
                    str(driving), "--result_video", model, "--overwrite")
    assert_one_line_error(result, "an input of this command")
    assert digest(str(tmp_path)) == before and not partials(str(tmp_path))


def test_an_existing_result_needs_overwrite(tmp_path, media):
    out = str(tmp_path / "result.mp4")
    with open(out, "wb") as stream:
        stream.write(b"my own video")
    assert_one_line_error(animate("--source_image", media["source"], "--driving_video", media["driving"],
                                  "--result_video", out), "already exists", "--overwrite")
    assert open(out, "rb").read() == b"my own video"
    done = animate("--source_image", media["source"], "--driving_video", media["driving"], "--result_video", out,
                   "--overwrite")
    assert done.returncode == 0, done.stderr[-1500:]
    assert open(out, "rb").read(12) != b"my own video" and not partials(str(tmp_path))


def test_the_default_result_name_is_refused_when_it_exists(tmp_path, media):
    (tmp_path / "source-animated.mp4").write_bytes(b"earlier")
    result = animate("--source_image", media["source"], "--driving_video", media["driving"], cwd=str(tmp_path))
    assert_one_line_error(result, "source-animated.mp4", "already exists")
    assert (tmp_path / "source-animated.mp4").read_bytes() == b"earlier"


def test_result_paths_that_cannot_be_written_fail_before_loading(tmp_path, media):
    (tmp_path / "a_folder.mp4").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (str(tmp_path / "a_folder.mp4"), "is a folder"),
        (str(tmp_path / "a_file" / "out.mp4"), "is a file, not a folder"),
        (str(tmp_path / "a_file" / "deeper" / "out.mp4"), "is a file, not a folder"),
        (str(tmp_path / "out.avi"), "cannot write .avi"),
        (str(tmp_path / "no_extension"), "cannot write a file without extension"),
    ]
    for out, fragment in cases:
        started = time.perf_counter()
        assert_one_line_error(animate("--source_image", media["source"], "--driving_video", media["driving"],
                                      "--result_video", out), fragment)
        assert time.perf_counter() - started < 10          # no model or video was loaded (typically 0.3 s)
    assert sorted(os.listdir(tmp_path)) == ["a_file", "a_folder.mp4"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the case cannot be made as root")
def test_an_unwritable_folder_is_refused(tmp_path, media):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_one_line_error(animate("--source_image", media["source"], "--driving_video", media["driving"],
                                      "--result_video", str(locked / "out.mp4")), "not writable")
    finally:
        locked.chmod(0o700)


def test_a_missing_output_folder_is_made(tmp_path, media):
    out = tmp_path / "new" / "folder" / "out.mp4"
    done = animate("--source_image", media["source"], "--driving_video", media["silent"], "--result_video", str(out))
    assert done.returncode == 0, done.stderr[-1500:]
    assert out.is_file() and not partials(str(tmp_path))


# ----------------------------------------------------------------------------------------------------------
# Streams and --visualize

def test_results_hold_one_video_stream_and_the_drivers_audio_once(tmp_path, media):
    for driving, expected in ((media["driving"], ["Video", "Audio"]), (media["silent"], ["Video"])):
        for extension in (".mp4", ".mov"):
            out = str(tmp_path / f"{os.path.basename(driving)}{extension}")
            done = animate("--source_image", media["source"], "--driving_video", driving, "--result_video", out)
            assert done.returncode == 0, done.stderr[-1500:]
            assert streams(out) == expected, (out, streams(out))
    gif = str(tmp_path / "out.gif")
    assert animate("--source_image", media["source"], "--driving_video", media["driving"], "--result_video",
                   gif).returncode == 0
    assert streams(gif) == ["Video"]


def test_visualize_writes_the_side_by_side_beside_the_result(tmp_path, media):
    from modules.data.video_io import open_video

    out = str(tmp_path / "out.mp4")
    done = animate("--source_image", media["source"], "--driving_video", media["driving"], "--result_video", out,
                   "--visualize")
    assert done.returncode == 0, done.stderr[-1500:]
    result, side = open_video(out), open_video(str(tmp_path / "out-side-by-side.mp4"))
    assert result.num_frames == side.num_frames == 24
    assert result.read([0]).shape[2] * 4 == side.read([0]).shape[2]          # source | driving | mask | result
    again = animate("--source_image", media["source"], "--driving_video", media["driving"], "--result_video",
                    str(tmp_path / "other.mp4"), "--visualize")
    assert again.returncode == 0
    (tmp_path / "third-side-by-side.mp4").write_bytes(b"mine")
    assert_one_line_error(animate("--source_image", media["source"], "--driving_video", media["driving"],
                                  "--result_video", str(tmp_path / "third.mp4"), "--visualize"),
                          "third-side-by-side.mp4", "already exists")
    assert not (tmp_path / "third.mp4").exists() and (tmp_path / "third-side-by-side.mp4").read_bytes() == b"mine"


# ----------------------------------------------------------------------------------------------------------
# Faults: a full disk, signals

def _small_disk(folder) -> bool:
    """A 300 kB tmpfs at ``folder`` (root only, and where mounting is allowed)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_one_line_and_leaves_no_broken_file(tmp_path, media):
    disk = tmp_path / "disk"
    if not _small_disk(disk):
        pytest.skip("a small tmpfs needs root and permission to mount (not available here)")
    try:
        (disk / "earlier.mp4").write_bytes(b"an earlier result")
        (disk / "result.mp4").write_bytes(b"kept")
        done = animate("--source_image", media["source"], "--driving_video", media["long"], "--result_video",
                       str(disk / "result.mp4"), "--overwrite")
        assert_one_line_error(done, "no space left on the disk")
        assert sorted(os.listdir(disk)) == ["earlier.mp4", "result.mp4"]
        assert (disk / "result.mp4").read_bytes() == b"kept"
        assert "audio carried over" not in done.stdout and "frames at" not in done.stdout
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _interrupt_when(command: list[str], ready, number: int, cwd=None) -> subprocess.CompletedProcess:
    """Start ``command``, send signal ``number`` once ``ready()`` holds (the work is under way), collect it."""
    process = subprocess.Popen([sys.executable, RUN, "--device", "cpu", *command], cwd=cwd or ROOT, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "finished before it could be interrupted"
    time.sleep(0.3)
    process.send_signal(number)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("number, status, word", [(signal.SIGTERM, 143, "terminated"),
                                                  (signal.SIGINT, 130, "interrupted")])
def test_a_signal_mid_video_removes_the_partial_file_and_keeps_the_earlier_result(tmp_path, media, number, status,
                                                                                 word):
    out = tmp_path / "result.mp4"
    out.write_bytes(b"the earlier result")
    result = _interrupt_when(["--mode", "animate", "--checkpoint", HEATMAP, "--source_image", media["source"],
                              "--driving_video", media["long"], "--result_video", str(out), "--overwrite"],
                             lambda: bool(partials(str(tmp_path))), number)
    assert_one_line_error(result, word, status=status)
    assert sorted(os.listdir(tmp_path)) == ["result.mp4"] and out.read_bytes() == b"the earlier result"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 1-step heatmap run on a small synthetic dataset (60-frame test videos), with its data."""
    from modules.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("run")
    data = root / "data"
    generate_dataset(str(data), seed=0, size=64, num_train_identities=2, num_test_identities=2,
                     clips_per_identity=1, num_frames=60, num_pairs=2)
    path = write_tiny(root, "tiny-heatmap.yaml", str(data), file_name="tiny.yaml", num_repeats=1)
    done = kpmask("--mode", "train", "--config", path, "--log_dir", str(root / "log"))
    assert done.returncode == 0, done.stderr[-1500:]
    (run_dir,) = glob.glob(str(root / "log" / "*"))
    return {"run": run_dir, "data": str(data), "config": path}


def test_an_interrupted_second_reconstruction_keeps_the_first_results(tiny_run):
    run_dir = tiny_run["run"]
    first = kpmask("--mode", "reconstruction", "--checkpoint", run_dir)
    assert first.returncode == 0, first.stderr[-1500:]
    results = os.path.join(run_dir, "reconstruction")
    before = digest(results)
    assert any(name.endswith("metrics.json") for name in before)
    result = _interrupt_when(["--mode", "reconstruction", "--checkpoint", run_dir],
                             lambda: bool(partials(run_dir)), signal.SIGTERM)
    assert_one_line_error(result, "terminated", status=143)
    assert digest(results) == before and not partials(run_dir)
    again = kpmask("--mode", "reconstruction", "--checkpoint", run_dir)               # and it runs again
    assert again.returncode == 0 and set(digest(results)) == set(before) and not partials(run_dir)


# ----------------------------------------------------------------------------------------------------------
# Configs

def test_config_problems_are_one_line_and_fast(tmp_path):
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for i in range(1, 10):
        name, previous = chr(ord("a") + i), chr(ord("a") + i - 1)
        bomb += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
    (tmp_path / "bomb.yaml").write_text(bomb)
    text = open(config_path("tiny-heatmap.yaml")).read()
    (tmp_path / "duplicate.yaml").write_text(text + "\ntrain_params:\n  num_epochs: 3\n")
    (tmp_path / "recursive.yaml").write_text("a: &a [1, *a]\n")
    (tmp_path / "folder.yaml").mkdir()
    cases = [("bomb.yaml", "alias"), ("duplicate.yaml", "duplicate key 'train_params'"),
             ("recursive.yaml", "recursive alias"), ("folder.yaml", "is a folder")]
    for name, fragment in cases:
        for mode in ("inspect", "train"):
            started = time.perf_counter()
            result = subprocess.run(
                ["bash", "-c", f"ulimit -v 6000000; exec {sys.executable} {RUN} --mode {mode} --config "
                               f"{tmp_path / name} --log_dir {tmp_path / 'log'}"],
                cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
            assert_one_line_error(result, fragment)
            assert time.perf_counter() - started < 5        # refused before torch is imported (about 0.3 s)
    assert not (tmp_path / "log").exists()


def test_bad_flags_are_one_line_without_the_usage_block():
    for args, fragment in ((["--mode", "dance"], "invalid choice: 'dance'"), (["--bogus"], "--bogus"),
                           (["--batch_size", "0"], "expected a positive integer")):
        assert_one_line_error(kpmask(*args), fragment)
    for name, args in (("demo.py", ["--nope"]), ("export_model.py", []), ("measure/results_table.py", ["--nope"]),
                       ("video_to_frames.py", []), ("label_keypoints.py", ["--landmarks", "feet"]),
                       ("synthetic_dataset.py", ["--size", "x"]), ("measure/keypoints_vs_joints.py", ["--nope"])):
        assert_one_line_error(script(name, *args))


def test_wrong_paths_fail_before_the_heavy_imports(tmp_path):
    cases = [(["--mode", "animate", "--checkpoint", "nowhere.pth.tar", "--source_image", "a.png", "--driving_video",
               "b.mp4"], "nowhere.pth.tar: checkpoint file not found"),
             (["--mode", "animate", "--checkpoint", HEATMAP, "--source_image", "a.png", "--driving_video", "b.mp4"],
              "a.png: file not found"),
             (["--mode", "train", "--config", "no/such.yaml"], "no/such.yaml: config file not found"),
             (["--mode", "reconstruction", "--checkpoint", "gone/"], "gone/: checkpoint file not found")]
    for args, fragment in cases:
        started = time.perf_counter()
        assert_one_line_error(kpmask(*args), fragment)
        assert time.perf_counter() - started < 2.0


def test_a_log_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "log").write_text("notes")
    assert_one_line_error(kpmask("--mode", "train", "--config", config_path("tiny-heatmap.yaml"), "--log_dir",
                                 str(tmp_path / "log")), "is a file, expected a folder")
    assert (tmp_path / "log").read_text() == "notes"


# ----------------------------------------------------------------------------------------------------------
# Checkpoints and inputs

def test_non_finite_weights_are_refused_naming_the_network_and_tensor(tmp_path, media):
    model = torch.load(HEATMAP, map_location="cpu", weights_only=True)
    key = next(k for k, v in model["generator"].items() if v.is_floating_point())
    model["generator"][key] = torch.full_like(model["generator"][key], float("nan"))
    broken = str(tmp_path / "diverged.pth.tar")
    torch.save(model, broken)
    out = str(tmp_path / "out.mp4")
    result = kpmask("--mode", "animate", "--checkpoint", broken, "--source_image", media["source"],
                    "--driving_video", media["driving"], "--result_video", out)
    assert_one_line_error(result, "'generator'", key, "NaN or infinite")
    assert not os.path.exists(out) and not partials(str(tmp_path))


def test_unreadable_inputs_are_plain_words(tmp_path, media):
    audio_only = str(tmp_path / "audio.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=300:duration=1", audio_only], check=True)
    truncated = str(tmp_path / "cut.mp4")
    with open(media["driving"], "rb") as stream:
        open(truncated, "wb").write(stream.read()[:2000])
    (tmp_path / "folder.png").mkdir()
    out = str(tmp_path / "out.mp4")
    cases = [(["--source_image", media["source"], "--driving_video", audio_only], "holds no video stream"),
             (["--source_image", media["source"], "--driving_video", truncated], "cut.mp4"),
             (["--source_image", str(tmp_path / "folder.png"), "--driving_video", media["driving"]], "is a folder"),
             (["--source_image", media["source"], "--driving_video", str(tmp_path / "none.mp4")], "none.mp4: not found")]
    for args, fragment in cases:
        assert_one_line_error(animate(*args, "--result_video", out), fragment)
    assert not os.path.exists(out) and not partials(str(tmp_path))


def test_a_model_files_relative_dataset_is_found_from_any_folder(tmp_path, tiny_run):
    """A model file whose config says root_dir: data/mini works from the repository it lies in and from
    anywhere else; missing data is an error listing every place looked in."""
    repo = tmp_path / "repo"
    (repo / "models").mkdir(parents=True)
    (repo / "setup.py").write_text("")
    shutil.copytree(tiny_run["data"], repo / "data" / "mini")
    export = script("export_model.py", tiny_run["run"], "--out", str(repo / "models" / "mini.pth.tar"))
    assert export.returncode == 0, export.stderr[-1500:]
    model = torch.load(repo / "models" / "mini.pth.tar", weights_only=True)
    model["config"]["dataset_params"].update(root_dir="data/mini", pairs_list="data/mini/test-pairs.csv")
    torch.save(model, repo / "models" / "mini.pth.tar")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cwd in (repo, elsewhere):
        done = kpmask("--mode", "reconstruction", "--checkpoint", str(repo / "models" / "mini.pth.tar"),
                      cwd=str(cwd))
        assert done.returncode == 0, done.stderr[-1500:]
    shutil.rmtree(repo / "data")
    missing = kpmask("--mode", "reconstruction", "--checkpoint", str(repo / "models" / "mini.pth.tar"),
                     cwd=str(elsewhere))
    last = assert_one_line_error(missing, "dataset folder not found", "looked in")
    assert "elsewhere" in last and "repo" in last


def test_export_and_demo_never_replace_what_they_did_not_write(tmp_path, tiny_run):
    out = tmp_path / "model.pth.tar"
    out.write_bytes(b"a model I had")
    assert_one_line_error(script("export_model.py", tiny_run["run"], "--out", str(out)), "already exists",
                          "--overwrite")
    assert out.read_bytes() == b"a model I had"
    assert script("export_model.py", tiny_run["run"], "--out", str(out), "--overwrite").returncode == 0
    assert out.read_bytes() != b"a model I had" and not partials(str(tmp_path))
    assert_one_line_error(script("export_model.py", str(out), "--out", str(out), "--overwrite"), "input")
    assert_one_line_error(script("export_model.py", str(out), "--out", str(tmp_path / "again.pth.tar")),
                          "already a model file", "training checkpoint")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    assert_one_line_error(script("demo.py", "--model", str(out), "--out", str(mine)), "thesis.tex")
    assert (mine / "thesis.tex").read_text() == "years of work"


def test_degenerate_media_animate_whole_with_a_warning_under_crop_auto(tmp_path):
    """A 1x1 photo and a 1-pixel-wide driving video hold no subject to crop: ``--crop auto`` (the default)
    animates them whole, saying so, instead of failing inside the crop search."""
    from PIL import Image

    photo = tmp_path / "one.png"
    Image.fromarray(np.full((1, 1, 3), 128, dtype=np.uint8)).save(photo)
    thin = tmp_path / "thin"
    thin.mkdir()
    for index in range(4):
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (64, 1, 3), dtype=np.uint8)).save(
            thin / f"{index:03d}.png")
    out = tmp_path / "out.mp4"
    env = dict(ENV, PYTHONWARNINGS="default")
    for model in (HEATMAP, CIRCLES):
        done = kpmask("--mode", "animate", "--checkpoint", model, "--source_image", str(photo), "--driving_video",
                      str(thin), "--result_video", str(out), "--overwrite", env=env)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-1500:]
        assert "no synthetic found in" in done.stderr and "--crop auto: the whole frame; --driving_crop auto: the " \
            "whole frame" in done.stdout
        assert "4 frames at" in done.stdout and out.is_file()


def test_a_long_hint_reaches_the_user_whole(tmp_path):
    """The error line is cut only past MAX_LINE (400): the labelled detector's hint, 280 characters, ends as
    written (it was cut at 250 before, losing where to pass the file)."""
    done = kpmask("--mode", "animate", "--checkpoint", os.path.join(ROOT, "models", "tiny-detector.pth.tar"),
                  "--source_image", os.path.join(ROOT, "examples", "faces", "lp-s12.jpg"), "--driving_video",
                  os.path.join(ROOT, "examples", "faces", "lp-d18.mp4"), "--result_video", str(tmp_path / "x.mp4"))
    last = assert_one_line_error(done, "pass it as --checkpoint_with_kp")
    assert last.endswith("(measure it with scripts/measure/keypoints_vs_joints.py)") and len(last) > 250
