"""scripts/measure/face_identities.py: grouping by descriptor distance, the files a PATH names, and the command end to
end with a stand-in landmarker (a photo's 'descriptor' is its mean colour; a grey photo shows no face)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import modules.evaluation.landmarks
from modules.core.errors import UserError
from modules.evaluation.landmarks import Landmarks
from scripts.measure import face_identities
from scripts.measure.face_identities import media_files, people

# ---------------------------------------------------------------- people()

def test_people_groups_transitively_under_the_threshold():
    a, b, c = [0.0, 0.0], [0.5, 0.0], [1.0, 0.0]          # a-b and b-c 0.5 apart, a-c 1.0 apart
    far = [5.0, 5.0]
    assert people(np.array([a, far, b, c]), threshold=0.6) == [[0, 2, 3], [1]]
    # with a threshold under the steps, every file is a person of its own
    assert people(np.array([a, far, b, c]), threshold=0.4) == [[0], [1], [2], [3]]
    # a step exactly at the threshold does not join ("closer than")
    assert people(np.array([a, b]), threshold=0.5) == [[0], [1]]


def test_people_joins_chains_reached_from_either_end():
    # c-d and a-b are found first, b-c joins the two groups into one
    points = np.array([[0.0], [10.0], [0.3], [0.9], [0.6]])     # a=0, far=10, b=0.3, d=0.9, c=0.6
    assert people(points, threshold=0.35) == [[0, 2, 3, 4], [1]]
    assert people(np.zeros((1, 4)), threshold=0.6) == [[0]]


# ---------------------------------------------------------------- media_files()

def _touch(path) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    open(str(path), "wb").close()
    return str(path)


def test_media_files_lists_photos_videos_and_frame_folders_of_a_folder(tmp_path):
    folder = tmp_path / "people"
    for name in ("b.JPG", "a.png", "talk.mp4", "clip.gif", ".hidden.png", "notes.txt", "c.webp"):
        _touch(folder / name)
    _touch(folder / "frames" / "0000.png")
    _touch(folder / ".cache" / "0000.png")
    listed = media_files([str(folder)])
    assert [os.path.basename(p) for p in listed] == ["a.png", "b.JPG", "c.webp", "clip.gif", "frames", "talk.mp4"]
    assert all(os.path.dirname(p) == str(folder) for p in listed)


def test_media_files_keeps_a_file_path_as_itself_and_folders_in_order(tmp_path):
    photo = _touch(tmp_path / "one" / "x.png")
    other = _touch(tmp_path / "two" / "y.mp4")
    assert media_files([other, str(tmp_path / "one")]) == [other, photo]
    assert media_files([photo]) == [photo]


def test_media_files_missing_path_and_empty_folder_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no such file or folder") as error:
        media_files([str(tmp_path / "nobody")])
    assert "\n" not in str(error.value) and "nobody" in str(error.value)
    empty = tmp_path / "empty"
    _touch(empty / ".hidden.png")
    _touch(empty / "readme.txt")
    with pytest.raises(UserError, match="no photos, videos or frame folders found") as error:
        media_files([str(empty)])
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- main() with a stand-in landmarker

class ColourLandmarks:
    """Stands in for dlib: a frame's descriptor is its mean colour / 255 (128-d, zero padded); a grey frame
    (all channels equal) has no face."""

    calls: list[int] = []

    def __init__(self):
        pass

    def detect(self, frames: np.ndarray) -> Landmarks:
        ColourLandmarks.calls.append(len(frames))
        count = len(frames)
        points = np.full((count, 68, 2), 0.5)
        found = np.zeros((count, 68), bool)
        embeddings = np.full((count, 128), np.nan)
        for t, frame in enumerate(frames):
            colour = frame.reshape(-1, 3).mean(axis=0)
            if np.ptp(colour) > 1:
                found[t] = True
                embeddings[t] = 0.0
                embeddings[t, :3] = colour / 255
        return Landmarks(points, found, embeddings)


def _photo(path, colour) -> str:
    Image.fromarray(np.full((24, 20, 3), colour, np.uint8)).save(str(path))
    return str(path)


def test_main_groups_photos_by_person_and_writes_the_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(modules.evaluation.landmarks, "FaceLandmarks", ColourLandmarks)
    ColourLandmarks.calls = []
    folder = tmp_path / "photos"
    folder.mkdir()
    red1 = _photo(folder / "red1.png", (200, 30, 30))
    red2 = _photo(folder / "red2.png", (210, 40, 25))
    blue = _photo(folder / "blue.png", (20, 30, 220))
    grey = _photo(folder / "grey.png", (128, 128, 128))
    (folder / "notes.txt").write_text("not a photo")
    out = tmp_path / "people.json"
    capsys.readouterr()

    assert face_identities.main([str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert ColourLandmarks.calls == [1, 1, 1, 1]                 # one frame per photo, the .txt skipped
    lines = printed.out.splitlines()
    # described files in sorted order: blue, red1, red2 (grey has no face)
    assert lines[0] == "person 0: blue.png"
    assert lines[1] == "person 1: red1.png, red2.png"
    assert lines[-1] == "2 people in 3 files (1 without a face)"
    assert any(line.strip().startswith("red1.png: nearest red2.png at 0.05") for line in lines)
    assert f"no face found in {grey}" in printed.err

    report = json.loads(out.read_text())
    assert report["threshold"] == 0.6
    assert report["people"] == [[blue], [red1, red2]]
    assert report["no_face"] == [grey]
    assert report["files"] == [blue, red1, red2]
    distance = np.array(report["distance"])
    assert distance.shape == (3, 3)
    np.testing.assert_allclose(distance, distance.T)
    np.testing.assert_array_equal(np.diag(distance), 0.0)
    expected = np.linalg.norm(np.array([200 - 210, 30 - 40, 30 - 25]) / 255)
    assert distance[1, 2] == pytest.approx(expected, abs=1e-4)
    assert distance[0, 1] > 0.6 and distance[0, 2] > 0.6
    assert report["nearest"][red1][0] == red2 and report["nearest"][blue][0] in (red1, red2)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_main_with_a_tighter_threshold_splits_the_red_pair(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(modules.evaluation.landmarks, "FaceLandmarks", ColourLandmarks)
    red1 = _photo(tmp_path / "red1.png", (200, 30, 30))
    red2 = _photo(tmp_path / "red2.png", (210, 40, 25))
    capsys.readouterr()
    assert face_identities.main([red1, red2, "--threshold", "0.01"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "2 people in 2 files (0 without a face)"


def test_main_rejects_zero_frames_and_missing_paths_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(modules.evaluation.landmarks, "FaceLandmarks", ColourLandmarks)
    photo = _photo(tmp_path / "red.png", (200, 30, 30))
    capsys.readouterr()
    assert face_identities.main([photo, "--frames", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --frames 0") and "expected positive values" in err
    assert face_identities.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err
    assert not (tmp_path / "out.json").exists()
