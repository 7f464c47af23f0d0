"""Add this CPU kind's results to tests/data/main-era-expected.pt (run from a checkout of commit b0a2b31, the
code before the redesign, on the machine whose kind is missing):
    cd <checkout of b0a2b31> && OMP_NUM_THREADS=1 python <this file> <repo>/tests/data
oneDNN picks different kernels on different instruction sets (AVX2, AVX-512, AMX), so the same code gives other
last bits on another CPU kind. This runs the old code on the existing fixture files exactly as
tests/test_main_era_fixtures.py runs the new code, and records its digests under this CPU's kind, plus its
values (the test's fallback on a kind nobody recorded)."""
import glob
import hashlib
import os
import shutil
import sys
import tempfile
import warnings

import torch
import yaml

REPO = os.getcwd()
sys.path.insert(0, REPO)
data_dir = os.path.abspath(sys.argv[1])
sys.path.insert(0, os.path.join(os.path.dirname(data_dir)))
import run
from cpu_kind import cpu_kind
from modules.data.synthetic import generate_dataset
from modules.inference.loading import load_model


def digest(t):
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


work = tempfile.mkdtemp()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _, model, _ = load_model(os.path.join(data_dir, "main-era-model.pth.tar"), torch.device("cpu"))
torch.manual_seed(7)
source, driving = torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64)
with torch.inference_mode():
    state = model.encode_source(source)
    initial = model.keypoints(driving[:1])
    absolute = model.animate(state, driving).prediction
    relative = model.animate(state, driving, initial, adapt_scale=True).prediction
data = os.path.join(work, "data")
generate_dataset(data, seed=0, size=64, num_train_identities=2, num_test_identities=2, clips_per_identity=1,
                 num_frames=6, num_pairs=2)
run_dir = os.path.join(work, "run")
os.makedirs(run_dir)
checkpoint = shutil.copy(os.path.join(data_dir, "main-era-checkpoint.pth.tar"),
                         os.path.join(run_dir, "00000001-interrupted.pth.tar"))
config = torch.load(checkpoint, weights_only=True)["config"]
config["dataset_params"].update(root_dir=data, pairs_list=os.path.join(data, "test-pairs.csv"))
config_file = os.path.join(work, "config.yaml")
yaml.safe_dump(config, open(config_file, "w"))
torch.set_num_threads(1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    assert run.main(["--mode", "train", "--checkpoint", checkpoint, "--config", config_file, "--device", "cpu"]) == 0
final = torch.load(os.path.join(run_dir, "00000001-checkpoint.pth.tar"), weights_only=True)
weights = {f"{n}.{k}": v for n in ("kp_detector", "generator") for k, v in final[n].items()}
path = os.path.join(data_dir, "main-era-expected.pt")
expected = torch.load(path, weights_only=True)
kinds = expected.setdefault("by_cpu_kind", {})
kinds[cpu_kind()] = {"absolute_sha256": digest(absolute), "relative_adapted_sha256": digest(relative),
                     "resumed_sha256": {key: digest(value) for key, value in weights.items()}}
expected["values"] = {"cpu_kind": cpu_kind(), "absolute": absolute, "relative_adapted": relative,
                      "resumed": weights}
torch.save(expected, path)
print(cpu_kind(), sorted(kinds))
