"""FOMM's data layer, where FOMM's users look for it: ``FramesDataset`` (training pairs and test videos),
``DatasetRepeater`` and ``PairedDataset`` (animation pairs). The code lives in modules/data/dataset.py; this
front end names it."""
from modules.data.dataset import (DatasetRepeater, DatasetWarning, FramesDataset, PairedDataset,  # noqa: F401
                                  frames_to_tensor, item_rng, video_id)
