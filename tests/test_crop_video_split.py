"""scripts/crop_video.py's split: an input's own train/ and test/ folders are kept, otherwise a hash of the
names splits by --test_percent, and an empty test split is said, never hidden. The cropping itself is
stubbed here (tests/test_crop.py crops for real); one test runs the command on a real face where dlib is
installed."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest

import scripts.crop_video as crop_video
from modules.core.errors import UserError
from modules.inference.crop import Box

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hash_percent(name: str) -> int:
    return zlib.crc32(name.encode("utf-8")) % 100


@pytest.fixture
def cropped(monkeypatch):
    """Stub the finder and the cropping: each video gets a folder; those named bad* are left out. Returns
    the list of video paths cropped."""
    paths: list[str] = []

    def crop_one(path, folder, finder, size, min_frames):
        if os.path.basename(path).startswith("bad"):
            return "no face found"
        paths.append(path)
        os.makedirs(folder)
        return Box(1, 2, 30)

    monkeypatch.setattr(crop_video, "make_finder", lambda kind, regressor: None)
    monkeypatch.setattr(crop_video, "crop_one", crop_one)
    return paths


def make_raw(root, *relatives: str) -> str:
    for relative in relatives:
        path = root / "raw" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")                                       # listed by name only: the cropping is stubbed
    return str(root / "raw")


def messages(err: str) -> list[str]:
    """The lines of stderr, without tqdm's progress bar."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and not re.search(r"\| *\d+/\d+ \[", line)]


def manifest(out) -> dict[str, str]:
    rows = (out / "crops.csv").read_text().splitlines()
    assert rows[0] == "name,split,box"
    return {row.split(",")[0]: row.split(",")[1] for row in rows[1:]}


def test_every_option_has_a_help_text():
    missing = [action.dest for action in crop_video.build_parser()._actions if not action.help]
    assert not missing


def test_the_inputs_own_train_and_test_folders_are_kept_and_said(tmp_path, cropped, capsys):
    # the hash would put bob in test and carol in train: the folders win
    assert hash_percent("bob") < 10 <= hash_percent("carol")
    raw = make_raw(tmp_path, "train/alice.gif", os.path.join("train", "more", "bob.mp4"), "test/carol.gif")
    out = tmp_path / "out"
    args = [raw, str(out), "--kind", "face"]
    assert crop_video.main(args) == 0
    assert manifest(out) == {"alice": "train", "bob": "train", "carol": "test"}
    assert sorted(os.listdir(out / "train")) == ["alice", "bob"] and os.listdir(out / "test") == ["carol"]
    captured = capsys.readouterr()
    assert messages(captured.err) == []
    last = captured.out.strip().splitlines()[-1]
    assert "3 of 3 videos" in last and "2 in train/, 1 in test/" in last and "train/ and test/ kept" in last
    assert crop_video.main(args) == 0 and len(cropped) == 3                # resumed: nothing cropped twice
    assert "2 in train/, 1 in test/" in capsys.readouterr().out


def test_an_empty_test_split_is_warned_about_in_one_line(tmp_path, cropped, capsys):
    names = ("alice", "carol", "dave")                                     # none hashes into the first 10%
    assert min(hash_percent(name) for name in names) >= 10
    raw = make_raw(tmp_path, *(f"{name}.gif" for name in names))
    assert crop_video.main([raw, str(tmp_path / "out"), "--kind", "face"]) == 0
    captured = capsys.readouterr()
    assert len(messages(captured.err)) == 1
    warning = messages(captured.err)[0]
    assert warning.startswith("warning: no video landed in test/")
    assert "raise --test_percent" in warning and "RAW_DIR/train and RAW_DIR/test" in warning
    last = captured.out.strip().splitlines()[-1]
    assert "3 in train/, 0 in test/" in last and "(train/, test/, crops.csv)" not in last
    # --test_percent 0 asks for no test split: nothing to warn about
    assert crop_video.main([raw, str(tmp_path / "none"), "--kind", "face", "--test_percent", "0"]) == 0
    assert messages(capsys.readouterr().err) == []


def test_test_percent_100_puts_every_video_in_test(tmp_path, cropped, capsys):
    raw = make_raw(tmp_path, "alice.gif", "carol.gif")
    out = tmp_path / "out"
    assert crop_video.main([raw, str(out), "--kind", "face", "--test_percent", "100"]) == 0
    assert manifest(out) == {"alice": "test", "carol": "test"} and not os.path.exists(out / "train")
    captured = capsys.readouterr()
    assert messages(captured.err) == [] and "0 in train/, 2 in test/" in captured.out


def test_a_test_folder_whose_videos_were_all_left_out_is_warned_about(tmp_path, cropped, capsys):
    raw = make_raw(tmp_path, "train/alice.gif", "test/bad-clip.gif")
    assert crop_video.main([raw, str(tmp_path / "out"), "--kind", "face"]) == 1
    err = messages(capsys.readouterr().err)
    assert err[0].startswith("left out test") and "no face found" in err[0]
    assert err[1].startswith("warning: no video landed in test/") and "RAW_DIR/test was left out" in err[1]


def test_videos_beside_the_train_and_test_folders_are_refused_before_any_work(tmp_path, cropped):
    raw = make_raw(tmp_path, "train/alice.gif", "test/carol.gif", "stray.gif", "val/dave.gif")
    with pytest.raises(UserError, match=r"2 video\(s\) outside its train/ and test/ folders \(e\.g\. stray\.gif\)"):
        crop_video.main([raw, str(tmp_path / "out"), "--kind", "face"])
    assert not cropped and not os.path.exists(tmp_path / "out")


def face_clip(path, frames: int = 16) -> None:
    """A gif of scikit-image's astronaut (public domain), her face drifting a few pixels per frame."""
    from PIL import Image
    from skimage.data import astronaut

    photo = astronaut()
    images = [Image.fromarray(np.ascontiguousarray(photo[40 + i:296 + i, 120 + 2 * i:376 + 2 * i]))
              for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=40)


def test_the_face_command_with_test_percent_100_exits_0_with_every_video_in_test(tmp_path):
    pytest.importorskip("dlib", reason="needs the metrics extra")
    raw, out = tmp_path / "RAW", tmp_path / "OUT"
    raw.mkdir()
    face_clip(raw / "astronaut.gif")
    done = subprocess.run([sys.executable, os.path.join("scripts", "crop_video.py"), str(raw), str(out),
                           "--kind", "face", "--size", "128", "--test_percent", "100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 of 1 videos" in done.stdout and "0 in train/, 1 in test/" in done.stdout
    assert messages(done.stderr) == []
    assert sorted(os.listdir(out / "test" / "astronaut")) == [f"{i:07d}.png" for i in range(16)]
    from PIL import Image

    assert Image.open(out / "test" / "astronaut" / "0000000.png").size == (128, 128)
