"""A model ready for inference from any file a user brings: a training checkpoint of this project or its run
folder, a model file, or FOMM's own checkpoint beside the config of its networks."""
from __future__ import annotations

import os
import warnings
from typing import Any, Optional

import torch

from modules.config.formats import MODEL_FORMAT, MODEL_KEYS, load_training_checkpoint, missing_entries, validated
from modules.config.loading import (EVALUATION_SECTIONS, config_from_dict, load_config, resolve_data_paths,
                                    with_evaluation_sections)
from modules.core.errors import CheckpointError, UserError
from modules.core.files import read_checkpoint
from modules.families.build import model_from_checkpoint


def load_model(path: str, device: torch.device, config_path: Optional[str] = None,
               ablation: Optional[str] = None, batch_size: int = 8) -> tuple[Any, Any, dict[str, Any]]:
    """(config, model in eval mode on ``device``, checkpoint) from a training checkpoint of this project or its run
    folder, or a model file (MODEL_FORMAT), both holding their config, or from a FOMM-format checkpoint (an
    official ``vox-cpk.pth.tar``: networks only) together with ``config_path``, the config of its networks.

    ``ablation`` (perturbed masks only: none, no_pert, no_ref, no_id) replaces the config's; results then go
    to ``<mode>-<ablation>/``. One checkpoint serves all four: r's loss never reaches m, l or h in training.

    ``batch_size``: the driving frames a run animates at once, for the memory check that comes before the
    weights are built (modules/families/memory.py: the estimate against what ``device`` has available)."""
    checkpoint = read_checkpoint(path) if os.path.isfile(path) else None     # a folder: its latest, below
    if checkpoint is not None and not ("format" in checkpoint and "config" in checkpoint):
        if not {"generator", "kp_detector"} <= set(checkpoint):
            raise CheckpointError(f"{path}: neither a training checkpoint of this project nor a FOMM checkpoint "
                                  f"(no 'generator' and 'kp_detector' entries; found {', '.join(sorted(checkpoint))})")
        if config_path is None:
            raise UserError(f"{path}: a FOMM-format checkpoint holds no config; pass --config with the networks it was "
                            f"trained with (config/vox-256-fomm.yaml or config/taichi-256-fomm.yaml for the official "
                            f"vox-cpk.pth.tar / taichi-cpk.pth.tar)")
        config = load_config(config_path)
        # results of a foreign file go into <its folder>/<its name>/, never over another file's
        checkpoint = dict(checkpoint, path=path, results_root=_results_root(path))
    else:
        if checkpoint is not None and checkpoint.get("format") == MODEL_FORMAT:
            missing = missing_entries(checkpoint, MODEL_KEYS, inference=True)
            if missing:
                raise CheckpointError(f"{path}: model file without {', '.join(missing)}")
            # results of a shipped model go into <its folder>/<its name>/, beside it
            checkpoint = dict(checkpoint, path=path, results_root=_results_root(path))
        else:
            checkpoint = load_training_checkpoint(path) if checkpoint is None else validated(checkpoint, path)
        data = checkpoint["config"]
        if config_path is not None:
            data, changed = with_evaluation_sections(data, config_path)
            kept = f"{checkpoint['path']} holds the networks and data it was trained with"
            used = f"; its {', '.join(changed)} used" if changed else \
                f" ignored ({kept}; only its {', '.join(EVALUATION_SECTIONS)} would apply)"
            warnings.warn(f"--config {config_path}{used}" + (f" ({kept})" if changed else ""), UserWarning,
                          stacklevel=2)
        file = f"{checkpoint['path']}:config" + (f" with {config_path}" if config_path else "")
        config = config_from_dict(data, file)
    if ablation is not None:
        if ablation not in config.record.ablations:
            raise UserError(f"--ablation {ablation}: {checkpoint['path']} is a {config.motion_name} model; the "
                            f"ablations (no_pert, no_ref, no_id) are the perturbed-masks model's")
        config.model_params.ablation = ablation
        checkpoint = dict(checkpoint, results_suffix=f"-{ablation}")
    resolve_data_paths(config, config_path if "config" not in checkpoint else checkpoint["path"])
    if not config.record.animates:
        raise UserError(f"{checkpoint['path']}: a labelled keypoint detector (stage one) has no generator to "
                        f"reconstruct or animate with; pass it as --checkpoint_with_kp to a heatmap, circles or FOMM "
                        f"config with its detector settings (measure it with scripts/measure/keypoints_vs_joints.py)")
    # The memory check before the weights are built: a run of batch_size driving frames (the modes' default 8)
    model = model_from_checkpoint(config, checkpoint, checkpoint["path"], device=device, batch=batch_size)
    return config, model.to(device).eval(), checkpoint


def _results_root(path: str) -> str:
    """``<folder of path>/<its name without .pth.tar>``: where results of a file outside a run folder go."""
    stem = os.path.basename(path)
    for suffix in (".tar", ".pth", ".pt"):
        stem = stem.removesuffix(suffix)
    return os.path.join(os.path.dirname(os.path.abspath(path)), stem)

