"""Training through run.py: run folder contents, exact resume, frozen detector, NaN guard, Ctrl-C, DDP."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
import yaml
from conftest import ROOT, config_path, save_fomm_checkpoint, write_tiny

import run
from modules.core.files import atomic_save, read_checkpoint
from modules.nets.keypoint_detector import KPDetector

FRAME = 64


@pytest.fixture(scope="module")
def kp_checkpoint(tmp_path_factory):
    """A seeded RANDOM detector saved in FOMM's checkpoint format (no pretrained one exists here)."""
    from modules.config.loading import load_config

    config = load_config(config_path("tiny-heatmap.yaml"))
    torch.manual_seed(123)
    detector = KPDetector(**config.model_params.detector_kwargs())
    path = tmp_path_factory.mktemp("kp") / "random-kp-detector.pth.tar"
    return save_fomm_checkpoint(str(path), detector.state_dict())


def write_config(folder, dataset_root, name="tiny.yaml", **train_params) -> str:
    """The heatmap config of these tests: two epochs, a milestone after the first, the paper's loss."""
    return write_tiny(folder, "tiny-heatmap.yaml", dataset_root, file_name=name, paper=True,
                      **{"num_epochs": 2, "epoch_milestones": [1], "log_freq": 1, **train_params})


def train(*args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # random VGG / random detector warnings
        return run.main(["--mode", "train", "--device", "cpu", *args])


def only_run_dir(log_dir) -> str:
    (run_dir,) = glob.glob(os.path.join(str(log_dir), "*"))
    return run_dir


def generator_state(checkpoint_path: str) -> dict:
    return read_checkpoint(checkpoint_path)["generator"]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_one_epoch_writes_checkpoint_logs_events_and_images(tmp_path, dataset_root, kp_checkpoint):
    config = write_config(tmp_path, dataset_root, num_epochs=1)
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(tmp_path / "log")) == 0
    run_dir = only_run_dir(tmp_path / "log")
    assert os.path.basename(run_dir).startswith("tiny-")
    checkpoint = read_checkpoint(os.path.join(run_dir, "00000000-checkpoint.pth.tar"))   # weights_only
    assert {"kp_detector", "generator", "optimizer_generator", "scheduler_generator", "epoch", "step", "rng",
            "config"} <= checkpoint.keys()
    assert checkpoint["epoch"] == 0 and checkpoint["epoch_complete"] and checkpoint["step"] == 4
    assert checkpoint["config"]["dataset_params"]["root_dir"] == dataset_root
    log_text = open(os.path.join(run_dir, "log.txt")).read()
    assert "00000000) step 4;" in log_text and "perceptual_high_res - " in log_text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir)
    events.Reload()
    assert {"loss/perceptual_low_res", "loss/perceptual_high_res", "loss/total", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4]
    assert events.Tags()["images"]
    assert yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))["train_params"]["num_epochs"] == 1
    info = yaml.safe_load(open(os.path.join(run_dir, "run.json")))["sessions"][0]
    assert info["seed"] == 0 and info["packages"]["torch"] == torch.__version__.split("+")[0] or \
        info["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert "--mode train" in info["command"] and info["git_commit"]
    import imageio.v3 as iio

    grid = iio.imread(os.path.join(run_dir, "train-vis", "00000000-train.png"))
    assert grid.shape == (2 * FRAME, 6 * FRAME, 3)       # batch of 2 rows; six columns


def test_detector_is_bit_identical_after_training(tmp_path, dataset_root, kp_checkpoint):
    config = write_config(tmp_path, dataset_root, num_epochs=1)
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(tmp_path / "log")) == 0
    trained = read_checkpoint(os.path.join(only_run_dir(tmp_path / "log"), "00000000-checkpoint.pth.tar"))
    assert_same_state(trained["kp_detector"], read_checkpoint(kp_checkpoint)["kp_detector"])   # BN buffers too
    # the optimizer holds exactly the generators' parameters, and they trained
    from modules.config.loading import load_config
    from modules.nets.generator import build_frame_generator

    generator_parameters = list(build_frame_generator(load_config(config).model_params).parameters())
    assert trained["optimizer_generator"]["param_groups"][0]["params"] == list(range(len(generator_parameters)))
    assert len(trained["optimizer_generator"]["state"]) == len(generator_parameters)


@pytest.mark.parametrize("stop_at", [3, 4])   # mid-epoch (epoch = 4 steps) and at the epoch boundary
def test_resume_is_bit_identical_to_straight_run(tmp_path, dataset_root, kp_checkpoint, stop_at):
    config = write_config(tmp_path, dataset_root, num_workers=2)
    common = ("--config", config, "--checkpoint_with_kp", kp_checkpoint)
    assert train(*common, "--max_steps", "6", "--log_dir", str(tmp_path / "straight")) == 0
    assert train(*common, "--max_steps", str(stop_at), "--log_dir", str(tmp_path / "split")) == 0
    split_dir = only_run_dir(tmp_path / "split")
    assert train("--checkpoint", split_dir, "--max_steps", "6") == 0          # the run folder: its latest
    straight = read_checkpoint(glob.glob(os.path.join(only_run_dir(tmp_path / "straight"), "00000001-*"))[0])
    resumed = read_checkpoint(glob.glob(os.path.join(split_dir, "00000001-*"))[0])
    assert straight["step"] == resumed["step"] == 6
    assert_same_state(straight["generator"], resumed["generator"])
    for a, b in zip(straight["optimizer_generator"]["state"].values(),
                    resumed["optimizer_generator"]["state"].values()):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert straight["scheduler_generator"]["last_epoch"] == resumed["scheduler_generator"]["last_epoch"] == 1
    assert straight["optimizer_generator"]["param_groups"][0]["lr"] == \
        resumed["optimizer_generator"]["param_groups"][0]["lr"]
    assert torch.equal(straight["rng"]["torch"], resumed["rng"]["torch"])
    assert len(glob.glob(os.path.join(split_dir, "run.json"))) == 1
    assert "continuing at epoch" in open(os.path.join(split_dir, "log.txt")).read()


def test_resume_continues_at_next_epoch_and_may_change_train_params(tmp_path, dataset_root, kp_checkpoint):
    config = write_config(tmp_path, dataset_root, num_epochs=1)
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(tmp_path / "log")) == 0
    run_dir = only_run_dir(tmp_path / "log")
    longer = write_config(tmp_path, dataset_root, name="longer.yaml", num_epochs=2)
    assert train("--checkpoint", os.path.join(run_dir, "00000000-checkpoint.pth.tar"), "--config", longer) == 0
    second = read_checkpoint(os.path.join(run_dir, "00000001-checkpoint.pth.tar"))
    assert second["epoch"] == 1 and second["step"] == 8
    # milestone [1]: epoch 0 trains at 2e-4, epoch 1 at 2e-5 (and the log says what each epoch used)
    assert second["optimizer_generator"]["param_groups"][0]["lr"] == pytest.approx(2e-5)
    log_text = open(os.path.join(run_dir, "log.txt")).read()
    assert "00000000) step 4; lr 0.0002;" in log_text and "00000001) step 8; lr 2e-05;" in log_text
    assert "continuing at epoch 1, batch 0" in log_text
    # done: resuming again trains nothing and writes no checkpoint
    assert train("--checkpoint", run_dir) == 0
    assert "nothing to train" in open(os.path.join(run_dir, "log.txt")).read()
    assert read_checkpoint(os.path.join(run_dir, "00000001-checkpoint.pth.tar"))["step"] == 8


def test_resume_applies_a_changed_schedule(tmp_path, dataset_root, kp_checkpoint):
    config = write_config(tmp_path, dataset_root, num_epochs=1)
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(tmp_path / "log")) == 0
    run_dir = only_run_dir(tmp_path / "log")
    changed = write_config(tmp_path, dataset_root, name="changed.yaml", num_epochs=2, lr_generator=1e-3,
                           epoch_milestones=[5])
    assert train("--checkpoint", run_dir, "--config", changed) == 0
    second = read_checkpoint(os.path.join(run_dir, "00000001-checkpoint.pth.tar"))
    assert second["optimizer_generator"]["param_groups"][0]["lr"] == pytest.approx(1e-3)   # no milestone passed
    assert "00000001) step 8; lr 0.001;" in open(os.path.join(run_dir, "log.txt")).read()


def test_resume_at_max_steps_trains_nothing(tmp_path, dataset_root, kp_checkpoint):
    config = write_config(tmp_path, dataset_root)
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--max_steps", "2", "--log_dir",
                 str(tmp_path / "log")) == 0
    run_dir = only_run_dir(tmp_path / "log")
    assert train("--checkpoint", run_dir, "--max_steps", "2") == 0
    assert read_checkpoint(os.path.join(run_dir, "00000000-interrupted.pth.tar"))["step"] == 2


def test_checkpoint_and_init_checkpoint_exclude_each_other(tmp_path, capsys):
    capsys.readouterr()
    assert train("--checkpoint", "a.pth.tar", "--init_checkpoint", "b.pth.tar") == 2
    assert "exclude each other" in capsys.readouterr().err


def test_resume_with_other_model_params_is_a_clear_error(tmp_path, dataset_root, kp_checkpoint, capsys):
    config = write_config(tmp_path, dataset_root, num_epochs=1)
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(tmp_path / "log")) == 0
    run_dir = only_run_dir(tmp_path / "log")
    with open(config) as stream:
        data = yaml.safe_load(stream)
    data["model_params"]["generator_params"]["num_bottleneck_blocks"] = 3
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    before = open(os.path.join(run_dir, "00000000-checkpoint.pth.tar"), "rb").read()
    capsys.readouterr()
    assert train("--checkpoint", run_dir, "--config", str(other)) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "model_params.generator_params.num_bottleneck_blocks is 2 in the checkpoint, 3 in the config" in error
    assert open(os.path.join(run_dir, "00000000-checkpoint.pth.tar"), "rb").read() == before


def test_init_checkpoint_starts_a_new_run_from_weights(tmp_path, dataset_root, kp_checkpoint):
    config = write_config(tmp_path, dataset_root, num_epochs=1)
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(tmp_path / "a")) == 0
    first = os.path.join(only_run_dir(tmp_path / "a"), "00000000-checkpoint.pth.tar")
    assert train("--config", config, "--init_checkpoint", first, "--max_steps", "1", "--log_dir",
                 str(tmp_path / "b")) == 0
    second = read_checkpoint(glob.glob(os.path.join(only_run_dir(tmp_path / "b"), "*.pth.tar"))[0])
    assert second["step"] == 1 and second["epoch"] == 0
    assert_same_state(second["kp_detector"], read_checkpoint(first)["kp_detector"])


def test_nan_loss_stops_with_the_step_named_and_keeps_the_checkpoint(tmp_path, dataset_root, kp_checkpoint,
                                                                     monkeypatch, capsys):
    from modules.families.keypoint_mask import KeypointMaskLoss

    config = write_config(tmp_path, dataset_root)
    original, calls = KeypointMaskLoss.forward, []

    def poisoned(self, output, driving):
        calls.append(1)
        terms = original(self, output, driving)
        return terms._replace(perceptual_high_res=terms.perceptual_high_res * float("nan")) if len(calls) == 6 \
            else terms

    monkeypatch.setattr(KeypointMaskLoss, "forward", poisoned)
    capsys.readouterr()
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(tmp_path / "log")) == 2
    error = capsys.readouterr().err
    assert "step 6: loss is not finite" in error and "perceptual_high_res nan" in error
    run_dir = only_run_dir(tmp_path / "log")
    assert read_checkpoint(os.path.join(run_dir, "00000000-checkpoint.pth.tar"))["step"] == 4
    assert not os.path.exists(os.path.join(run_dir, "00000001-checkpoint.pth.tar"))


def test_bf16_autocast_trains_on_cpu_and_fp16_needs_cuda(tmp_path, dataset_root, kp_checkpoint, capsys):
    config = write_config(tmp_path, dataset_root)
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--mixed_precision", "bf16",
                 "--channels_last", "--max_steps", "2", "--log_dir", str(tmp_path / "bf16")) == 0
    assert train("--config", config, "--checkpoint_with_kp", kp_checkpoint, "--max_steps", "2", "--log_dir",
                 str(tmp_path / "fp32")) == 0
    bf16 = read_checkpoint(glob.glob(os.path.join(only_run_dir(tmp_path / "bf16"), "*.pth.tar"))[0])
    fp32 = read_checkpoint(glob.glob(os.path.join(only_run_dir(tmp_path / "fp32"), "*.pth.tar"))[0])
    assert bf16["config"]["train_params"]["mixed_precision"] == "bf16"
    assert bf16["config"]["train_params"]["channels_last"] is True
    # autocast really ran in bf16: the same two steps give close but not identical weights
    name = "high_res.final.weight"
    assert not torch.equal(bf16["generator"][name], fp32["generator"][name])
    assert torch.allclose(bf16["generator"][name], fp32["generator"][name], atol=2e-3)
    assert all(torch.isfinite(v).all() for v in bf16["generator"].values() if v.is_floating_point())
    capsys.readouterr()
    assert train("--config", config, "--mixed_precision", "fp16", "--log_dir", str(tmp_path / "fp16")) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err


def test_missing_dataset_is_a_one_line_error(tmp_path, capsys):
    config = write_config(tmp_path, str(tmp_path / "nowhere"))
    capsys.readouterr()
    assert train("--config", config, "--log_dir", str(tmp_path / "log")) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "nowhere" in error


def test_checkpoint_of_another_kind_is_refused_for_resume(tmp_path, kp_checkpoint, capsys):
    capsys.readouterr()
    assert train("--checkpoint", kp_checkpoint) == 2
    assert "a FOMM checkpoint? pass it as --checkpoint_with_kp" in capsys.readouterr().err


def _subprocess_env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_0(tmp_path, dataset_root, kp_checkpoint):
    config = write_config(tmp_path, dataset_root, num_epochs=1000)
    log_dir = tmp_path / "log"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), "--mode", "train", "--config", config,
                                "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(log_dir), "--device", "cpu"],
                               env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    # wait for the first epoch's checkpoint, so that training is well under way
    while not glob.glob(str(log_dir / "*" / "00000000-checkpoint.pth.tar")) and time.time() < deadline:
        assert process.poll() is None, process.stdout.read().decode()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 0, output
    run_dir = only_run_dir(log_dir)
    interrupted = glob.glob(os.path.join(run_dir, "*-interrupted.pth.tar")) + \
        glob.glob(os.path.join(run_dir, "0000000[1-9]-checkpoint.pth.tar"))
    assert interrupted, output
    assert "resume with --checkpoint" in open(os.path.join(run_dir, "log.txt")).read()
    # the progress bar counts epochs as log.txt and the checkpoint names do, from 0
    assert "epoch 0 [0..999]" in output and "00000000) step" in open(os.path.join(run_dir, "log.txt")).read()
    stopped_at = read_checkpoint(interrupted[0])["step"]
    assert train("--checkpoint", interrupted[0], "--max_steps", str(stopped_at + 1)) == 0
    assert f"resumed from {interrupted[0]} (step {stopped_at})" in open(os.path.join(run_dir, "log.txt")).read()


KILLER = r"""
import sys, torch
sys.path.insert(0, sys.argv[2])
from modules.core.files import atomic_save
state = {"weights": torch.randn(4_000_000), "step": 0}
i = 0
while True:
    i += 1
    state["step"] = i
    atomic_save(state, sys.argv[1])
"""


def test_kill_9_during_checkpoint_writes_never_leaves_a_broken_checkpoint(tmp_path):
    path = str(tmp_path / "00000000-checkpoint.pth.tar")
    atomic_save({"weights": torch.zeros(1), "step": 0}, path)
    stale_seen = 0
    for delay in (0.05, 0.13, 0.21, 0.29, 0.37):     # seconds after the first write: different points of a write
        process = subprocess.Popen([sys.executable, "-c", KILLER, path, ROOT], env=_subprocess_env())
        deadline = time.time() + 60
        while read_checkpoint(path)["step"] == 0 and time.time() < deadline:   # torch imported, writing
            time.sleep(0.01)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoint = read_checkpoint(path)                 # always whole
        assert checkpoint["step"] > 0 and checkpoint["weights"].shape == (4_000_000,)
        stale_seen += len(glob.glob(str(tmp_path / "*.tmp")))
        atomic_save({"weights": torch.zeros(1), "step": 0}, path)
    assert stale_seen > 0                                  # some kills did land mid-write
    from logger import remove_stale_temporaries

    remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path) == [os.path.basename(path)]


def test_atomic_save_gives_the_file_the_mode_of_a_plain_write(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_save({"step": 1}, str(tmp_path / "c.pth.tar"))
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "c.pth.tar").st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777 == 0o644


def test_sampler_ranks_together_make_the_single_process_batches():
    from train import Distributed, EpochBatchSampler

    single = EpochBatchSampler(20, 4, seed=3, dist=Distributed())
    ranks = [EpochBatchSampler(20, 2, seed=3, dist=Distributed(rank, 2)) for rank in range(2)]
    for sampler in [single] + ranks:
        sampler.set_epoch(5)
    for whole, part0, part1 in zip(single, *ranks):
        assert sorted(whole) == sorted(part0 + part1)
    assert list(single) != list(EpochBatchSampler(20, 4, seed=3, dist=Distributed()))   # epoch 0 differs
    single.set_epoch(5, skip_batches=2)
    assert len(list(single)) == len(single) == 3


def test_ddp_two_gloo_processes_match_one_process_averaging_gradients(tmp_path, dataset_root, kp_checkpoint):
    from modules.config.loading import load_config
    from modules.data.dataset import DatasetRepeater, FramesDataset
    from modules.families.build import build_model
    from modules.families.keypoint_mask import build_loss
    from train import Distributed, EpochBatchSampler

    config_file = write_config(tmp_path, dataset_root, batch_size=4, channels_last=False)   # as the reference below
    log_dir = tmp_path / "log"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             os.path.join(ROOT, "run.py"), "--mode", "train", "--config", config_file,
                             "--checkpoint_with_kp", kp_checkpoint, "--log_dir", str(log_dir), "--device", "cpu",
                             "--max_steps", "1"], env=_subprocess_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = only_run_dir(log_dir)
    checkpoints = glob.glob(os.path.join(run_dir, "*.pth.tar"))
    assert len(checkpoints) == 1
    log_text = open(os.path.join(run_dir, "log.txt")).read()
    assert "parameters identical on 2 ranks" in log_text and "SyncBatchNorm needs GPUs" in log_text

    # One process: each rank's half of the batch separately, gradients averaged, one Adam step.
    config = load_config(config_file)
    torch.manual_seed(config.train_params.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(config, checkpoint_with_kp=kp_checkpoint)
        loss_fn = build_loss(config)
    dataset = DatasetRepeater(FramesDataset(config.dataset_params.root_dir, config.dataset_params.frame_shape,
                                            id_sampling=True, is_train=True,
                                            augmentation_params=config.dataset_params.augmentation_params,
                                            random_seed=0), 2)
    dataset.set_epoch(0)
    optimizer = torch.optim.Adam(model.generator.parameters(), lr=config.train_params.lr_generator,
                                 betas=tuple(config.train_params.betas))
    model.train()
    gradients = []
    for rank in range(2):
        sampler = EpochBatchSampler(len(dataset), 2, 0, Distributed(rank, 2))
        sampler.set_epoch(0)
        indices = next(iter(sampler))
        batch = torch.utils.data.default_collate([dataset[i] for i in indices])
        model.zero_grad()
        loss_fn(model(batch["source"], batch["driving"]), batch["driving"]).total().backward()
        gradients.append([p.grad.clone() for p in model.generator.parameters()])
    for parameter, grad0, grad1 in zip(model.generator.parameters(), *gradients):
        parameter.grad = (grad0 + grad1) / 2
    optimizer.step()
    checkpoint = read_checkpoint(checkpoints[0])
    adam = checkpoint["optimizer_generator"]["state"]
    compared = 0
    for index, (name, parameter) in enumerate(model.generator.named_parameters()):
        # After one Adam step exp_avg = (1 - beta1) * gradient: the averaged gradients agree...
        assert torch.allclose(adam[index]["exp_avg"], optimizer.state[parameter]["exp_avg"], atol=1e-6, rtol=1e-4), name
        # ...and so do the parameters, except where the gradient is rounding noise (a conv bias before
        # BatchNorm has a zero gradient in exact arithmetic; Adam's first step moves it by lr * sign(noise)).
        meaningful = optimizer.state[parameter]["exp_avg"].abs() > 1e-6
        assert torch.allclose(checkpoint["generator"][name][meaningful], parameter.detach()[meaningful],
                              atol=1e-5, rtol=0), name
        compared += int(meaningful.sum())
    assert compared > 0.99 * sum(p.numel() for p in model.generator.parameters())


def test_a_training_step_runs_no_backward_through_the_detector(tiny_model, tiny_loss):
    from modules.families.keypoint_mask import KeypointMaskTraining
    from train import step_context

    trainable = KeypointMaskTraining(tiny_model, tiny_loss)
    assert trainable.optimized() == ["generator"] and set(trainable.networks()) == {"kp_detector", "generator"}
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    source, driving = torch.rand(2, 3, FRAME, FRAME), torch.rand(2, 3, FRAME, FRAME)
    trainable.train()
    step = trainable.training_step(source, driving, step_context(torch.device("cpu"), None, scaler))
    _, source_mask, _, driving_mask, _, _ = step.shown()
    assert source_mask.grad_fn is None and driving_mask.grad_fn is None                # no graph to go back
    assert all(p.grad is None for p in tiny_model.mask.parameters())
    assert not tiny_model.mask.detector.training                                       # BN statistics frozen
    assert all(p.grad is not None for p in tiny_model.generator.parameters())
