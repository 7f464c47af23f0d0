"""Write tests/data/main-era-* (run from a checkout of commit b0a2b31, the code before the redesign):
    cd <checkout of b0a2b31> && OMP_NUM_THREADS=1 python <this file> OUT_DIR
A small circles run (stopped at step 3 of 4), its model file, what the model file computes on fixed inputs,
and the weights the run ends with when resumed to step 4."""
import glob
import os
import subprocess
import sys
import warnings

import torch
import yaml

REPO = os.getcwd()
sys.path.insert(0, REPO)
out = os.path.abspath(sys.argv[1])
work = os.path.join(out, "work")
os.makedirs(work, exist_ok=True)
from modules.data.synthetic import generate_dataset

data = os.path.join(work, "data")
generate_dataset(data, seed=0, size=64, num_train_identities=2, num_test_identities=2, clips_per_identity=1,
                 num_frames=6, num_pairs=2)
config = yaml.safe_load(open(os.path.join(REPO, "config", "tiny-circles.yaml")))
config["dataset_params"].update(root_dir=data, pairs_list=os.path.join(data, "test-pairs.csv"))
config["model_params"]["kp_detector_params"].update(block_expansion=4, max_features=16)
config["model_params"]["common_params"]["num_kp"] = 5
config["model_params"]["generator_params"].update(block_expansion=4, max_features=8)
config["model_params"]["generator_params"]["high_res"].update(block_expansion=4, max_features=8)
config["train_params"].update(num_epochs=2, num_repeats=2, batch_size=2, num_workers=0, epoch_milestones=[1],
                              checkpoint_freq=1, log_freq=1)
config["metrics_params"] = {"landmarks": "none"}
config_file = os.path.join(work, "fixture-circles.yaml")
yaml.safe_dump(config, open(config_file, "w"))
import run


def kpmask(*args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert run.main([*args, "--device", "cpu"]) == 0, args
# a random detector is fine here: the fixture is about formats and exactness, not quality
kpmask("--mode", "train", "--config", config_file, "--max_steps", "3", "--log_dir", os.path.join(work, "log"))
(run_dir,) = glob.glob(os.path.join(work, "log", "*"))
(stopped,) = glob.glob(os.path.join(run_dir, "*-interrupted.pth.tar"))
import shutil

shutil.copy(stopped, os.path.join(out, "main-era-checkpoint.pth.tar"))
subprocess.run([sys.executable, os.path.join(REPO, "scripts", "export_model.py"), stopped, "--out",
                os.path.join(out, "main-era-model.pth.tar")], check=True)
kpmask("--mode", "train", "--checkpoint", run_dir)       # resumed to the end (step 8)
from modules.inference.loading import load_model

ckpts = sorted(glob.glob(os.path.join(run_dir, "*-checkpoint.pth.tar")))
final = torch.load(ckpts[-1], weights_only=True)
config_, model, _ = load_model(os.path.join(out, "main-era-model.pth.tar"), torch.device("cpu"))
torch.manual_seed(7)
source, driving = torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64)
with torch.inference_mode():
    state = model.encode_source(source)
    initial = model.keypoints(driving[:1])
    absolute = model.animate(state, driving).prediction
    relative = model.animate(state, driving, initial, adapt_scale=True).prediction
    keypoints = model.keypoints(driving).value
import hashlib


def digest(t):
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
torch.save({"inputs": "torch.manual_seed(7); source, driving = torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64)",
            "absolute_sha256": digest(absolute), "relative_adapted_sha256": digest(relative),
            "absolute_mean": absolute.double().mean().item(), "relative_adapted_mean": relative.double().mean().item(),
            "keypoints": keypoints, "resumed_sha256": {f"{n}.{k}": digest(v) for n in ("kp_detector", "generator")
                                                  for k, v in final[n].items()},
            "resumed_step": final["step"], "written_by": subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO,
            capture_output=True, text=True).stdout.strip()}, os.path.join(out, "main-era-expected.pt"))
print(final["step"], os.listdir(out))
