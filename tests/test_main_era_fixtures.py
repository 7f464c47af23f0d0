"""Files written before the redesign (tests/data/main-era-*, made by tests/data/make_main_era_fixtures.py at
commit b0a2b31: a small circles run stopped at step 3 of 4, and its model file) still load, animate to the
same bits, and resume to the same weights as that code resumed them."""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings

import pytest
import torch
import yaml
from conftest import DATA

import run
from cpu_kind import cpu_kind
from modules.core.files import read_checkpoint
from modules.inference.loading import load_model


@pytest.fixture(scope="module")
def expected():
    return torch.load(os.path.join(DATA, "main-era-expected.pt"), weights_only=True)


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def same_as_old_code(expected: dict, name: str, found: dict | torch.Tensor) -> None:
    """Bit-identical to what the old code computed on a CPU of a recorded kind (oneDNN's kernels, and so the
    last bits, differ between AVX2, AVX-512 and AMX; tests/data/add_cpu_kind_to_main_era_fixtures.py records
    a kind); on an unrecorded kind, within float rounding of the recorded values."""
    recorded = [expected] + list(expected.get("by_cpu_kind", {}).values())
    digests = {key: digest(value) for key, value in found.items()} if isinstance(found, dict) else digest(found)
    if any(entry[f"{name}_sha256"] == digests for entry in recorded):
        return
    values = expected["values"]["resumed" if name == "resumed" else name]
    pairs = [(found[key], values[key]) for key in values] if isinstance(found, dict) else [(found, values)]
    assert cpu_kind() not in expected.get("by_cpu_kind", {}), f"{name}: other bits than the old code's on {cpu_kind()}"
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in pairs), f"{name}: differs from the old code"


@pytest.mark.parametrize("name", ["main-era-model.pth.tar", "main-era-checkpoint.pth.tar"])
def test_an_old_file_animates_to_the_same_bits(tmp_path, expected, name):
    path = shutil.copy(os.path.join(DATA, name), tmp_path / name)     # results would go beside it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, model, _ = load_model(str(path), torch.device("cpu"))
    torch.manual_seed(7)
    source, driving = torch.rand(1, 3, 64, 64), torch.rand(2, 3, 64, 64)      # as the fixture's "inputs" say
    with torch.inference_mode():
        state = model.encode_source(source)
        initial = model.keypoints(driving[:1])
        absolute = model.animate(state, driving).prediction
        relative = model.animate(state, driving, initial, adapt_scale=True).prediction
        keypoints = model.keypoints(driving).value
    assert torch.allclose(keypoints, expected["keypoints"], atol=1e-6)
    same_as_old_code(expected, "absolute", absolute)
    same_as_old_code(expected, "relative_adapted", relative)


def test_an_old_checkpoint_resumes_to_the_weights_the_old_code_reached(tmp_path, expected):
    from modules.data.synthetic import generate_dataset

    data = str(tmp_path / "data")            # the fixture's dataset, made again (same seed, same bytes)
    generate_dataset(data, seed=0, size=64, num_train_identities=2, num_test_identities=2, clips_per_identity=1,
                     num_frames=6, num_pairs=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    checkpoint = shutil.copy(os.path.join(DATA, "main-era-checkpoint.pth.tar"),
                             run_dir / "00000001-interrupted.pth.tar")
    config = read_checkpoint(str(checkpoint))["config"]
    config["dataset_params"].update(root_dir=data, pairs_list=os.path.join(data, "test-pairs.csv"))
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    # Bit-identical at the thread count the fixture was written with (OMP_NUM_THREADS=1): another count
    # changes the order of the reductions in the backward pass.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert run.main(["--mode", "train", "--checkpoint", str(checkpoint), "--config", str(config_file),
                             "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    final = read_checkpoint(str(run_dir / "00000001-checkpoint.pth.tar"))
    assert final["step"] == expected["resumed_step"] == 4
    found = {f"{network}.{key}": value for network in ("kp_detector", "generator") for key, value in final[network].items()}
    same_as_old_code(expected, "resumed", found)
