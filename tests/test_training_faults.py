"""Training faults: a corrupt frame is skipped with one warning naming it; broken data and a full disk stop
training with one line naming the file, a non-zero exit and the earlier checkpoints intact; nothing hangs
(DataLoader workers ignore SIGTERM, so a worker left running would hold the process at exit)."""
from __future__ import annotations

import errno
import glob
import multiprocessing
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import ROOT, write_tiny

import logger as run_log
import run
from modules.core.errors import UserError
from modules.data import training_loader
from modules.data.dataset import DatasetWarning, FramesDataset
from modules.data.training_loader import SKIPPED, UNFILLED, SampleFaults, SkippingDataset, collate_skipping

BAD_VIDEO = "id001#00"


def damaged_copy(dataset_root: str, folder, all_videos: bool = False) -> str:
    """A copy of the tiny dataset with unreadable training frames: ``id001#00`` cut to 2 frames, the second a
    truncated PNG, so that every draw of that video fails (``all_videos``: every frame but the first of every
    training video is garbage, so that every draw fails)."""
    root = str(folder / "data")
    shutil.copytree(dataset_root, root)
    if all_videos:
        for path in glob.glob(os.path.join(root, "train", "*", "*.png")):
            if not path.endswith("00000.png"):
                with open(path, "wb") as stream:
                    stream.write(b"not a png")
        return root
    video = os.path.join(root, "train", BAD_VIDEO)
    for name in sorted(os.listdir(video))[2:]:
        os.remove(os.path.join(video, name))
    bad = os.path.join(video, "00001.png")
    with open(bad, "rb") as stream:
        head = stream.read(200)
    with open(bad, "wb") as stream:
        stream.write(head)
    return root


def bad_frame(root: str) -> str:
    return os.path.join(root, "train", BAD_VIDEO, "00001.png")


def subprocess_env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def run_training_process(*args: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """``run.py --mode train`` in a process of its own; a hang fails the test at the timeout. With
    ``file_size_limit`` no file can grow beyond it (EFBIG, a full disk for the process's writes)."""
    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # the write then fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), "--mode", "train", "--device", "cpu", *args],
                          env=subprocess_env(), capture_output=True, text=True, timeout=180,
                          preexec_fn=limit_file_size if file_size_limit else None)


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]


# ----------------------------------------------------------------------------------------------------------
# Corrupt frames

def test_an_unreadable_sample_is_replaced_by_a_fixed_substitute_and_named_once(dataset_root, tmp_path):
    root = damaged_copy(dataset_root, tmp_path)
    dataset = SkippingDataset(FramesDataset(root, (64, 64), id_sampling=True, random_seed=0), seed=0)
    items = [dataset[index] for index in range(len(dataset))]            # num_workers 0: the same code
    assert [len(item[SKIPPED]) for item in items] == [0, 1, 0, 0]
    (path, problem), = items[1][SKIPPED]
    assert path == bad_frame(root) and "cannot decode the image" in problem
    assert items[1]["name"] != BAD_VIDEO
    assert torch.equal(dataset[1]["source"], items[1]["source"])        # the substitute is a function of the seed
    faults = SampleFaults(os.path.join(root, "train"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            batch = collate_skipping([dataset[index] for index in range(4)])
            assert batch["source"].shape == (4, 3, 64, 64)
            faults.check(batch)
            assert SKIPPED not in batch
    assert [str(w.message).split(";")[0] for w in caught if w.category is DatasetWarning] == \
        [f"{bad_frame(root)}: {problem}"]
    assert (faults.drawn, faults.failed) == (15, 3)


def test_too_many_failed_draws_or_an_unfillable_batch_stop_with_one_line(monkeypatch):
    monkeypatch.setattr(training_loader, "MIN_DRAWS", 8)
    faults = SampleFaults("data/train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        faults.check({"source": torch.zeros(4, 3, 8, 8), SKIPPED: [("a.png", "truncated")] * 3})   # 3 of 7: on
        with pytest.raises(UserError, match=r"^a\.png: truncated; 6 of 11 training samples could not be read "
                                            r"\(2 bad files"):
            faults.check({"source": torch.zeros(1, 3, 8, 8), SKIPPED: [("b.png", "truncated")] * 3})
    with pytest.raises(UserError, match=r"^c\.mp4: frame 3 .*8 draws in a row .* data/train look broken"):
        SampleFaults("data/train").check({SKIPPED: [("c.mp4", "frame 3 could not be decoded")], UNFILLED: True})


def test_training_in_a_worker_skips_a_corrupt_frame_with_one_warning(dataset_root, tmp_path):
    root = damaged_copy(dataset_root, tmp_path)
    config = write_tiny(tmp_path, "tiny-heatmap.yaml", root, num_workers=1)     # id001 drawn twice an epoch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run.main(["--mode", "train", "--config", config, "--device", "cpu", "--log_dir",
                         str(tmp_path / "log")]) == 0
    named = [str(w.message) for w in caught if w.category is DatasetWarning]
    assert len(named) == 1 and named[0].startswith(bad_frame(root) + ": cannot decode the image")
    (run_dir,) = glob.glob(str(tmp_path / "log" / "*"))
    assert read_checkpoint_step(os.path.join(run_dir, "00000000-checkpoint.pth.tar")) == 4
    assert open(os.path.join(run_dir, "log.txt")).read().count(bad_frame(root)) == 1
    assert multiprocessing.active_children() == []


def test_a_failing_worker_ends_training_without_leaving_workers_behind(dataset_root, tmp_path, monkeypatch):
    def broken(self, index, rng):
        raise ZeroDivisionError("a bug, not a bad file: it surfaces")

    monkeypatch.setattr(FramesDataset, "sample", broken)                 # the forked worker inherits it
    config = write_tiny(tmp_path, "tiny-heatmap.yaml", dataset_root, num_workers=1)
    with warnings.catch_warnings(), pytest.raises(ZeroDivisionError, match="a bug"):
        warnings.simplefilter("ignore")
        run.main(["--mode", "train", "--config", config, "--device", "cpu", "--log_dir", str(tmp_path / "log")])
    assert multiprocessing.active_children() == []


def test_broken_training_data_stop_with_one_line_and_no_hang(dataset_root, tmp_path):
    root = damaged_copy(dataset_root, tmp_path, all_videos=True)
    config = write_tiny(tmp_path, "tiny-heatmap.yaml", root, num_workers=1)
    result = run_training_process("--config", config, "--log_dir", str(tmp_path / "log"))
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    # a frame of the first video drawn, its problem, and why training stopped (long paths are shortened)
    assert re.match(r"error: \S+/train/id00\d#00/0000[1-7]\.png: cannot decode the image", line), line
    assert "8 draws in a row" in line and line.endswith("look broken, stopped")


# ----------------------------------------------------------------------------------------------------------
# A full disk

def read_checkpoint_step(path: str) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def test_a_full_disk_at_a_checkpoint_stops_with_one_line_and_keeps_the_earlier_one(dataset_root, tmp_path):
    config = write_tiny(tmp_path, "tiny-heatmap.yaml", dataset_root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run.main(["--mode", "train", "--config", config, "--device", "cpu", "--max_steps", "1",
                         "--log_dir", str(tmp_path / "log")]) == 0
    (run_dir,) = glob.glob(str(tmp_path / "log" / "*"))
    earlier = os.path.join(run_dir, "00000000-interrupted.pth.tar")
    assert os.path.getsize(earlier) > 1_000_000                        # what the limit below refuses
    # The resume (with a DataLoader worker) trains the epoch's 3 other steps, then cannot write its checkpoint.
    workers = write_tiny(tmp_path, "tiny-heatmap.yaml", dataset_root, file_name="workers.yaml", num_workers=1)
    result = run_training_process("--checkpoint", run_dir, "--config", workers, file_size_limit=1_000_000)
    assert result.returncode == 2
    (line,) = error_lines(result.stderr)
    wanted = os.path.join(run_dir, "00000000-checkpoint.pth.tar")
    assert line == f"error: {wanted}: cannot write (File too large); training stopped, the checkpoints " \
                   f"written before are intact"
    assert read_checkpoint_step(earlier) == 1
    assert not os.path.exists(wanted) and not glob.glob(os.path.join(run_dir, "**", "*.tmp"), recursive=True)


@pytest.mark.parametrize("target", ["picture", "events"])
def test_a_failed_write_of_the_run_log_is_one_error_naming_the_file(tmp_path, monkeypatch, capsys, target):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if target == "events":     # TensorBoard writes in a thread of its own; the error reaches the main thread
        from tensorboard.summary.writer.record_writer import RecordWriter

        written, write = [], RecordWriter.write

        def full_after_the_header(self, data):
            written.append(data)
            return write(self, data) if len(written) == 1 else no_space()

        monkeypatch.setattr(RecordWriter, "write", full_after_the_header)
    log = run_log.RunLogger(str(tmp_path))
    if target == "picture":
        def half_written(path, *args, **kwargs):
            with open(path, "wb") as stream:
                stream.write(b"\x89PNG")
            no_space()

        monkeypatch.setattr(run_log.iio, "imwrite", half_written)
        columns = type("Shown", (tuple,), {"_fields": ("a", "b")})((torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)))
        with pytest.raises(run_log.RunFolderError, match=r"train-vis/00000000-train\.png: cannot write \(No space"):
            log.images(0, 1, columns)
        assert os.listdir(tmp_path / "train-vis") == []                   # no half picture, no temporary
        log.close()
    else:
        with pytest.raises(run_log.RunFolderError, match=r"/events\.out\.tfevents\.[^:]+: cannot write \(No space") \
                as raised:
            log.scalars(1, {"loss": 1.0})       # raises here or at close, as the writer thread's timing falls
            log.close()
        log.close(raised.value)                 # after an error: closes what is left, raises nothing more
        assert log.text.closed
    assert "Traceback" not in capsys.readouterr().err
