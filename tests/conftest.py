"""Shared fixtures: tiny configs, the original-code fixture, FOMM-format checkpoints made on the fly."""
from __future__ import annotations

import os
import sys
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
sys.path.insert(0, ROOT)
# Inference on the reference engine unless a test asks for another (tests/test_engines.py), and an engine
# cache of the test session's own, never the user's ~/.cache/kpmask.
os.environ.setdefault("KPMASK_ENGINE", "torch")
os.environ.setdefault("KPMASK_PRECISION", "no")          # fp32 figures on every CPU (auto is tested on its own)
os.environ.setdefault("KPMASK_CACHE", os.path.join(__import__("tempfile").mkdtemp(prefix="kpmask-tests-"), "cache"))

from modules.config.loading import load_config  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def config_path(name: str) -> str:
    return os.path.join(ROOT, "config", name)


@pytest.fixture
def tiny_config():
    return paper_variant(load_config(config_path("tiny-heatmap.yaml")))


@pytest.fixture
def tiny_circles_config():
    return paper_variant(load_config(config_path("tiny-circles.yaml")))


def write_tiny(folder, name: str, dataset_root: str, *, file_name: str | None = None, paper: bool = False,
               landmarks: str | None = "none", **train_params) -> str:
    """The one config writer of the tests: config/<name> pointed at ``dataset_root`` (its pairs too), one
    short epoch by default, no landmark metrics (``landmarks=None`` keeps the config's); ``train_params``
    override; ``paper`` gives the paper's initialisation and loss (``paper_variant``). Written as
    ``folder/<file_name or name>``; returns its path."""
    import yaml

    with open(config_path(name)) as stream:
        data = yaml.safe_load(stream)
    data["dataset_params"]["root_dir"] = dataset_root
    data["dataset_params"]["pairs_list"] = os.path.join(dataset_root, "test-pairs.csv")
    data["train_params"].update({"num_epochs": 1, "num_repeats": 2, "batch_size": 2, "num_workers": 0,
                                 "epoch_milestones": [], "checkpoint_freq": 1, **train_params})
    if landmarks is not None:
        data.setdefault("metrics_params", {})["landmarks"] = landmarks
    if paper:          # every generator weight gets a gradient from the first step
        data["model_params"]["generator_params"]["high_res"]["init"] = "default"
        data["train_params"]["loss_weights"]["perceptual"] = [10, 10, 10]
    os.makedirs(str(folder), exist_ok=True)
    path = os.path.join(str(folder), file_name or name)
    with open(path, "w") as stream:
        yaml.safe_dump(data, stream)
    return path


def train_ddp_on_two_gloo_processes(config_file: str, log_dir, max_steps: int = 2) -> str:
    """torchrun run.py --mode train on 2 CPU processes (gloo); asserts it exits 0 and every rank held the same
    parameters at the checkpoint (train.py checks and logs it). Returns the run folder."""
    import glob
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             os.path.join(ROOT, "run.py"), "--mode", "train", "--config", config_file, "--log_dir",
                             str(log_dir), "--device", "cpu", "--max_steps", str(max_steps)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (run_dir,) = glob.glob(os.path.join(str(log_dir), "*"))
    with open(os.path.join(run_dir, "log.txt")) as stream:
        assert "parameters identical on 2 ranks" in stream.read()
    return run_dir


def paper_variant(config):
    """A tiny config with the paper's initialisation and loss (PyTorch's init, perceptual weights 10): the
    shipped tiny configs start the U-Net as a copy of the source (its other weights 0, so no gradient reaches
    them at step 0) and train on the pixel term alone, which would leave the gradient-routing tests nothing
    to route."""
    config.model_params.generator_params.high_res.init = "default"
    config.train_params.loss_weights.perceptual = [10.0, 10.0, 10.0]
    return config


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory):
    """A small synthetic dataset of 64 px frames: 4 training identities, one 8-frame clip each, 2 test pairs."""
    from modules.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic")
    generate_dataset(str(root), seed=0, size=64, num_train_identities=4, num_test_identities=2,
                     clips_per_identity=1, num_frames=8, num_pairs=2)
    return str(root)


@pytest.fixture(scope="session")
def original():
    """What the original FOMM / keypoint-mask code computed (copy of shared/fixtures/original-masks-small.pt)."""
    return torch.load(os.path.join(DATA, "original-masks-small.pt"), weights_only=True)


class IdentityFeatures(torch.nn.Module):
    """A feature extractor returning the image itself: the perceptual loss becomes a pyramid L1."""

    def forward(self, image):
        return [image]


class TinyFeatures(torch.nn.Module):
    """Three small conv layers standing in for VGG-19 (the tiny configs have three perceptual weights)."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Conv2d(3, 4, 3, padding=1),
                                           torch.nn.Conv2d(4, 4, 3, padding=1, stride=2),
                                           torch.nn.Conv2d(4, 4, 3, padding=1, stride=2)])
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, image):
        features = []
        for layer in self.layers:
            image = torch.relu(layer(image))
            features.append(image)
        return features


@pytest.fixture
def tiny_model(tiny_config):
    from modules.families.build import build_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the random detector warns
        return build_model(tiny_config)


@pytest.fixture
def tiny_loss(tiny_config):
    from modules.families.keypoint_mask import build_loss

    return build_loss(tiny_config, feature_extractor=TinyFeatures())


def save_fomm_checkpoint(path: str, kp_detector_state: dict, prefix: str = "") -> str:
    """A dict shaped like FOMM's %08d-checkpoint.pth.tar / vox-cpk.pth.tar."""
    torch.save({"generator": {}, "discriminator": {},
                "kp_detector": {prefix + k: v for k, v in kp_detector_state.items()},
                "optimizer_generator": {}, "optimizer_discriminator": {}, "optimizer_kp_detector": {},
                "epoch": 3}, path)
    return path


def pytest_terminal_summary(terminalreporter) -> None:
    """One loud line when the browser tests were skipped for lack of a browser (tests/test_browser.py)."""
    for report in terminalreporter.stats.get("skipped", []):
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if "the browser tests need " in reason:
            reason = reason[reason.index("the browser tests need "):]
            terminalreporter.write_line(f"BROWSER TESTS SKIPPED: {reason}", yellow=True, bold=True)
            return
