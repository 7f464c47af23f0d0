"""scripts/measure/learning_curve.py: the training time read from log.txt, the checkpoints picked, and the curve of a
tiny two-checkpoint run written, drawn and grown without evaluating a checkpoint twice."""
from __future__ import annotations

import csv
import glob
import os
import warnings

import pytest
from conftest import write_tiny

import run
from modules.core.errors import UserError
from scripts.measure import learning_curve
from scripts.measure.learning_curve import checkpoints_of, hours_at

LOG = """\
# data: 2 training videos, 2 test videos
00000000) step 100; lr 0.001; keypoint - 2.1; total - 5.0; 21.5 s, 18.6 samples/s
# checkpoint runs/x/00000000-checkpoint.pth.tar (epoch 1, step 100)
00000001) step 200; lr 0.001; keypoint - 2.0; total - 4.8; 30.0 s, 13.3 samples/s
00000002) step 300; lr 1e-04; keypoint - 1.9; total - 4.5; 18.5 s, 21.6 samples/s
# stopped at step 300 (epoch 3, batch 0); resume with --checkpoint runs/x
# resumed from runs/x/00000002-checkpoint.pth.tar: epoch 3, step 300 (step 999 is not an epoch line)
00000003) step 400; lr 1e-04; keypoint - 1.8; total - 4.4; 3600.0 s, 0.1 samples/s
00000004) step 500; lr 1e-04; keypoint - nan; total - nan; 7200.0 s, 0.1 samples/s
"""


def test_hours_at_sums_the_epoch_seconds_up_to_a_step(tmp_path):
    (tmp_path / "log.txt").write_text(LOG)
    run_dir = str(tmp_path)
    assert hours_at(run_dir, 100) == pytest.approx(21.5 / 3600)
    assert hours_at(run_dir, 250) == pytest.approx(51.5 / 3600)          # between two epoch lines
    assert hours_at(run_dir, 300) == pytest.approx(70.0 / 3600)
    assert hours_at(run_dir, 400) == pytest.approx((70.0 + 3600) / 3600)  # across the resume
    assert hours_at(run_dir, 10 ** 6) == pytest.approx((70.0 + 3600 + 7200) / 3600)
    assert hours_at(run_dir, 99) is None                                 # before the first epoch line


def test_hours_at_without_a_log_or_epoch_lines_is_none(tmp_path):
    assert hours_at(str(tmp_path), 100) is None
    (tmp_path / "log.txt").write_text("# nothing trained yet\n# step 100; 5.0 s, 1.0 samples/s\n")
    assert hours_at(str(tmp_path), 100) is None


def _checkpoints(folder, count: int) -> list[str]:
    os.makedirs(str(folder), exist_ok=True)
    paths = []
    for epoch in range(count):
        path = os.path.join(str(folder), f"{epoch * 10 + 9:08d}-checkpoint.pth.tar")
        open(path, "wb").close()
        paths.append(path)
    (folder / "00000099-interrupted.pth.tar").write_bytes(b"")          # not a completed checkpoint
    (folder / "model.pth.tar").write_bytes(b"")
    return paths


def test_checkpoints_of_spreads_the_points_evenly_and_keeps_the_last(tmp_path):
    paths = _checkpoints(tmp_path / "run", 10)
    run_dir = str(tmp_path / "run")
    assert checkpoints_of(run_dir, 10) == paths
    assert checkpoints_of(run_dir, 50) == paths
    assert checkpoints_of(run_dir, 4) == [paths[0], paths[3], paths[6], paths[9]]
    assert checkpoints_of(run_dir, 2) == [paths[0], paths[9]]
    assert checkpoints_of(run_dir, 1) == [paths[9]]                    # the one point is the last checkpoint
    for points in range(1, 10):
        picked = checkpoints_of(run_dir, points)
        assert len(picked) == points == len(set(picked)) and picked[-1] == paths[-1] and picked == sorted(picked)


def test_checkpoints_of_a_folder_without_checkpoints_is_a_one_line_error(tmp_path):
    (tmp_path / "log.txt").write_text(LOG)
    with pytest.raises(UserError, match="no NNNNNNNN-checkpoint.pth.tar in it") as error:
        checkpoints_of(str(tmp_path), 3)
    assert "\n" not in str(error.value)


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    capsys.readouterr()
    assert learning_curve.main([str(tmp_path), "--points", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--points 0" in err
    assert learning_curve.main([str(tmp_path), "--out", str(tmp_path / "curve")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no NNNNNNNN-checkpoint.pth.tar" in err
    assert not os.path.exists(str(tmp_path / "curve.png"))


@pytest.fixture(scope="module")
def two_checkpoint_run(tmp_path_factory):
    """The tiny heatmap config trained 2 epochs of one step each, a checkpoint after each -> the run folder."""
    from modules.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("curve")
    generate_dataset(str(root / "data"), seed=0, size=64, num_train_identities=2, num_test_identities=2,
                     clips_per_identity=1, num_frames=6, num_pairs=2)
    config = write_tiny(root, "tiny-heatmap.yaml", str(root / "data"), num_epochs=2, num_repeats=1,
                        batch_size=2, checkpoint_freq=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run.main(["--config", config, "--mode", "train", "--device", "cpu",
                         "--log_dir", str(root / "log")]) == 0
    (run_dir,) = glob.glob(str(root / "log" / "*"))
    return run_dir


def test_the_curve_of_a_run_is_written_drawn_and_grown_without_evaluating_twice(two_checkpoint_run, tmp_path,
                                                                                  monkeypatch, capsys):
    import torch

    checkpoints = sorted(glob.glob(os.path.join(two_checkpoint_run, "*-checkpoint.pth.tar")))
    assert len(checkpoints) == 2
    steps = [int(torch.load(path, map_location="cpu", weights_only=True)["step"]) for path in checkpoints]
    assert steps[0] < steps[1]
    out = str(tmp_path / "curve")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert learning_curve.main([two_checkpoint_run, "--out", out, "--points", "2", "--batch_size", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"2 points in {out}.csv and {out}.png"

    with open(out + ".csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == learning_curve.COLUMNS
    run_name = os.path.basename(two_checkpoint_run)
    assert [r["run"] for r in rows] == [run_name, run_name]
    assert [r["checkpoint"] for r in rows] == [os.path.basename(p) for p in checkpoints]
    assert [int(r["step"]) for r in rows] == steps
    assert [int(r["epoch"]) for r in rows] == sorted(int(r["epoch"]) for r in rows) and rows[0]["epoch"] != rows[1]["epoch"]
    for row in rows:
        assert 0 < float(row["prediction_l1"]) < 1 and 0 < float(row["prediction_motion_l1"]) < 1
        assert 0 < float(row["copy_source_l1"]) < 1
        assert row["prediction_akd"] == row["prediction_mkr"] == ""          # no landmark metrics here
        assert float(row["hours"]) >= 0
    assert rows[0]["copy_source_l1"] == rows[1]["copy_source_l1"]           # the same data, the same baseline
    assert float(rows[0]["hours"]) <= float(rows[1]["hours"])
    with open(out + ".png", "rb") as stream:
        assert stream.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(str(tmp_path)) if ".tmp" in name]

    # a second run finds both checkpoints in the table: nothing is evaluated again, the plot is redrawn
    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated a checkpoint already in the table")

    monkeypatch.setattr(learning_curve, "evaluate", no_evaluation)
    os.remove(out + ".png")
    assert learning_curve.main([two_checkpoint_run, "--out", out, "--points", "2"]) == 0
    with open(out + ".csv", newline="") as stream:
        assert list(csv.DictReader(stream)) == rows
    assert os.path.getsize(out + ".png") > 0


def test_real_frames_landmarks_are_found_once_per_process(monkeypatch):
    """A learning curve scores the same test frames once per checkpoint: a fixed pretrained detector (dlib,
    MediaPipe) looks at each batch of real frames once; other frames, and generated ones, are looked at again."""
    import numpy as np
    import torch

    from modules.evaluation import scorer as evaluation
    from modules.evaluation.landmarks import Landmarks

    calls = []

    class Fake:
        name, num_points, min_size = "face", 68, 1

        def detect(self, frames):
            calls.append(len(frames))
            return Landmarks(np.zeros((len(frames), 68, 2)), np.ones((len(frames), 68), bool))

    scorer = object.__new__(evaluation.FrameScorer)
    scorer.landmarker = Fake()
    monkeypatch.setattr(evaluation, "_REAL_LANDMARKS", {})
    frames = torch.rand(3, 3, 16, 16)
    first, second = scorer.target(frames), scorer.target(frames.clone())
    assert calls == [3] and first.landmarks is second.landmarks
    scorer.target(torch.rand(2, 3, 16, 16))
    scorer.landmarks(frames)                                     # a candidate's frames: always detected
    assert calls == [3, 2, 3]
    scorer.landmarker.name = "synthetic"                         # a trained regressor: never remembered
    scorer.target(frames)
    assert calls == [3, 2, 3, 3]
