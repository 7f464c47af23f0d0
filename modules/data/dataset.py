"""FOMM's data layer: training pairs and test videos (FramesDataset), repeats, and animation pairs.

The data folder holds ``train/`` and ``test/``, each with one entry per video (formats: modules/data/video_io.py).
A folder without them is split at random with a fixed seed (20% of the video ids for testing, as FOMM) and
the dataset's ``notes`` say so. The augmentation is modules/data/augmentation.py's, the choice of animation pairs
modules/data/pairs.py's.

Reproducibility: every random choice of an item (which video of an id, which two frames, flips, jitter) is
drawn from ``item_rng(seed, epoch, index)``, so the same (seed, epoch, index) gives the identical item in any
process, DataLoader worker or resumed run. Neither numpy's nor torch's global generator is touched. The epoch
lives in shared memory, so ``set_epoch`` reaches DataLoader workers even when they are persistent.
"""
from __future__ import annotations

import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from modules.config.sections import AugmentationParams, DatasetParams, LabelParams
from modules.core.errors import UserError
from modules.data.augmentation import Augmentation
from modules.data.keypoint_labels import POINTS_FILE, LabelLayout, label_layout, labels_to_normalized, read_labels
from modules.data.pairs import random_pairs, read_pairs_csv
from modules.data.video_io import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, Video, VideoError, VideoInfo, open_video,
                                   probe_video, video_kind, video_name)

TEST_FRACTION = 0.2          # of the video ids, when the folder has no train/test split (FOMM: test_size=0.2)
# The seed of that split: fixed (FOMM's 0), not random_seed, so a training run with --seed 5 and a later
# reconstruction (any seed) see the same split and no test video is trained on.
SPLIT_SEED = 0


class DatasetWarning(UserWarning):
    """A video left out of a dataset (unreadable, empty, too short), or pairs naming absent videos."""


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item: a pure function of (seed, epoch, index)."""
    # numpy takes only non-negative entropy; a negative --seed wraps (non-negative seeds are unchanged).
    return np.random.default_rng([int(seed) % 2 ** 64, int(epoch), int(index)])


def video_id(name: str) -> str:
    """The person / clip-source id of a video: its name up to the first '#' (FOMM's naming)."""
    return name.split("#", 1)[0]


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float32 (n, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float().div_(255)


class _SharedEpoch:
    """An epoch number that DataLoader workers (forked or spawned, persistent or not) read live."""

    def __init__(self):
        self.value = torch.zeros((), dtype=torch.int64).share_memory_()

    def get(self) -> int:
        return int(self.value)

    def set(self, epoch: int) -> None:
        self.value.fill_(int(epoch))


# ----------------------------------------------------------------------------------------------------------
# The dataset

def _candidates(folder: str) -> list[str]:
    """Paths of the entries of ``folder`` that look like videos (hidden entries left out), sorted by name."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        raise UserError(f"{folder}: cannot list the folder ({error.strerror})") from None
    paths = [os.path.join(folder, name) for name in names if not name.startswith(".")]
    return [path for path in paths if video_kind(path) is not None]


def _probe(path: str, frame_shape: Sequence[int]) -> tuple[Optional[VideoInfo], Optional[str]]:
    try:
        return probe_video(path, frame_shape), None
    except VideoError as error:
        return None, error.problem


class FramesDataset(Dataset):
    """One data split. Training items are frame pairs, test items whole videos (see ``sample``)."""

    def __init__(self, root_dir: str | os.PathLike, frame_shape: Sequence[int], id_sampling: bool = False,
                 is_train: bool = True, augmentation_params: Optional[AugmentationParams] = None,
                 random_seed: int = 0, pairs_list: Optional[str] = None, labels: Optional[LabelParams] = None,
                 searched: Sequence[str] = (), whole: bool = False):
        self.root_dir = os.fspath(root_dir)
        if len(frame_shape) not in (2, 3) or any(int(s) < 1 for s in frame_shape) or \
                (len(frame_shape) == 3 and int(frame_shape[2]) != 3):
            raise UserError(f"frame_shape: expected [height, width] or [height, width, 3], got {list(frame_shape)}")
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.id_sampling = id_sampling
        self.is_train = is_train
        self.random_seed = int(random_seed)
        self.pairs_list = pairs_list
        self.searched = list(searched)         # where a relative root_dir was looked for (for its error)
        self.whole = whole                     # a root without train/ and test/: all of it, not a random split
        self.notes: list[str] = []
        self._epoch = _SharedEpoch()
        # FOMM augments training items only.
        self.transform = Augmentation(augmentation_params) if is_train and augmentation_params else None

        self.folder, paths = self._split_paths()   # the split's folder (the root if split at random)
        self._scan_videos(paths)
        self.labels: Optional[LabelLayout] = None
        self._label_paths: list[str] = []
        self._stored_sizes: dict[int, tuple[int, int]] = {}
        if labels is not None and is_train:    # the labelled detector's training items only
            self._check_labels(labels)
        self.ids = [video_id(name) for name in self.names]
        if is_train and id_sampling:
            # One item per id and epoch; the item picks one of the id's videos at random.
            groups: dict[str, list[int]] = {}
            for index, identity in enumerate(self.ids):
                groups.setdefault(identity, []).append(index)
            self._groups = [groups[identity] for identity in sorted(groups)]
        else:
            self._groups = [[index] for index in range(len(self.videos))]

    def _scan_videos(self, paths: list[str]) -> None:
        """Keep the usable videos of ``paths`` (sorted by name): unreadable ones, duplicate names and 1-frame
        training videos are skipped with a DatasetWarning; none usable is an error."""
        self.videos: list[str] = []                # usable video paths, sorted by name
        self.names: list[str] = []
        self._infos: list[VideoInfo] = []
        # Probing mp4/mov runs one ffmpeg per file: threads overlap them (and the folder listings).
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            probes = list(pool.map(lambda p: _probe(p, self.frame_shape), paths))
        seen = {}
        for path, (info, problem) in zip(paths, probes):
            name = video_name(path)
            if info is not None and self.is_train and info.num_frames < 2:
                info, problem = None, f"{info.num_frames} frame (a training pair needs 2 different frames)"
            if info is not None and name in seen:
                info, problem = None, f"{os.path.basename(seen[name])} has the same name {name!r}"
            if info is None:
                warnings.warn(f"{path}: skipped, {problem}", DatasetWarning, stacklevel=3)
                continue
            seen[name] = path
            self.videos.append(path)
            self.names.append(name)
            self._infos.append(info)
        if not self.videos:
            found = f"all {len(paths)} found were skipped" if paths else "none found"
            raise UserError(f"{self.folder}: no usable video for the {'train' if self.is_train else 'test'} split "
                            f"(expected frame folders or {'/'.join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)} files; "
                            f"{found})")

    def _check_labels(self, labels: LabelParams) -> None:
        """Find and check every video's keypoint labels up front (a bad file fails before training starts)."""
        flips = self.transform is not None and self.transform.horizontal_flip
        self.labels = label_layout(self.root_dir, labels, needs_mirror=flips)
        split = os.path.relpath(self.folder, self.root_dir)
        points = None
        for name, info in zip(self.names, self._infos):
            label_path = os.path.normpath(os.path.join(self.labels.folder, split, name + ".npy"))
            points = read_labels(label_path, info.num_frames, points).shape[1]
            self._label_paths.append(label_path)
        if max(self.labels.columns) >= points:
            raise UserError(f"{self._label_paths[0]}: {points} points per frame, but "
                            f"{os.path.join(self.labels.folder, POINTS_FILE)} names more")

    @classmethod
    def from_config(cls, dataset_params: DatasetParams, is_train: bool, random_seed: int = 0,
                    labels: Optional[LabelParams] = None, whole: bool = False) -> "FramesDataset":
        """The split named by ``dataset_params`` (seed: train_params.seed for training; ``labels``: also return
        the keypoint labels of both frames; ``whole``: a root without split folders is used whole)."""
        return cls(dataset_params.root_dir, dataset_params.frame_shape, id_sampling=dataset_params.id_sampling,
                   is_train=is_train, augmentation_params=dataset_params.augmentation_params,
                   random_seed=random_seed, pairs_list=dataset_params.pairs_list, labels=labels,
                   searched=dataset_params.searched, whole=whole)

    def _split_paths(self) -> tuple[str, list[str]]:
        """(the split's folder, its candidate video paths), splitting the root at random if it has no split."""
        root = self.root_dir
        if not os.path.isdir(root):
            hint = (f"; make the synthetic dataset with: python scripts/synthetic_dataset.py --out {root}"
                    if "synthetic" in os.path.basename(os.path.normpath(root)) else "")
            if len(self.searched) > 1:
                hint = f" (looked in {', '.join(self.searched)})" + hint
            raise UserError(f"{root}: dataset folder not found (dataset_params.root_dir){hint}"
                            if not os.path.exists(root)
                            else f"{root}: expected a folder with train/ and test/ (dataset_params.root_dir)")
        split = "train" if self.is_train else "test"
        has_train, has_test = (os.path.isdir(os.path.join(root, s)) for s in ("train", "test"))
        if has_train or has_test:
            folder = os.path.join(root, split)
            if not os.path.isdir(folder):
                raise UserError(f"{folder}: folder not found ({root} has a {'test' if has_test else 'train'} "
                                f"folder but no {split} folder)")
            return folder, _candidates(folder)
        paths = _candidates(root)
        if self.whole:
            if not paths:
                raise UserError(f"{root}: no videos in it (expected test/, or videos and frame folders directly in it)")
            return root, paths
        ids = sorted({video_id(video_name(path)) for path in paths})
        # Ids, not videos: clips of one person must not land on both sides.
        test_count = math.ceil(TEST_FRACTION * len(ids)) if len(ids) > 1 else 0
        order = np.random.default_rng(SPLIT_SEED).permutation(len(ids))
        test_ids = {ids[i] for i in order[:test_count]}
        chosen = [p for p in paths if (video_id(video_name(p)) in test_ids) == (not self.is_train)]
        test_videos = sum(video_id(video_name(p)) in test_ids for p in paths)
        self.notes.append(f"{root} has no train/test folders: its {len(paths)} videos ({len(ids)} ids) were split "
                          f"at random with seed {SPLIT_SEED}, {test_count} ids ({test_videos} videos) for "
                          f"testing and {len(ids) - test_count} ids ({len(paths) - test_videos} videos) for "
                          f"training; this dataset is the {split} part")
        if not chosen:
            raise UserError(f"{root}: no videos left for the {split} split ({len(ids)} video id(s); the random "
                             f"split needs at least 2, or make train/ and test/ folders)")
        return root, chosen

    # -- epochs and items

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Items of ``epoch`` from now on (call before iterating a DataLoader over this dataset)."""
        self._epoch.set(epoch)

    def __len__(self) -> int:
        return len(self._groups)

    def num_frames(self, video_index: int) -> int:
        return self._infos[video_index].num_frames

    def video(self, index: int) -> Video:
        """The ``index``-th video of ``self.videos`` (= item ``index`` unless training with id_sampling)."""
        return open_video(self.videos[index], self.frame_shape, self._infos[index])

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        """Item ``index`` with every random choice from ``rng``.

        Training: {"source", "driving": float32 (3, H, W) in [0, 1], two distinct frames of one video (the
        earlier one is the source unless time-flipped), augmented alike; "name": that video's name}; with
        labels also "source_keypoints", "driving_keypoints" (K, 2) in [-1, 1] and "source_visible",
        "driving_visible" (K,) in {0, 1}, flipped with the frames.
        Test: {"video": float32 (T, 3, H, W) in [0, 1], "name"}; ``rng`` is not used.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range ({len(self)} items)")
        if not self.is_train:
            video = self.video(index)
            return {"video": frames_to_tensor(video.read_all()), "name": video.name}
        group = self._groups[index]
        chosen = group[int(rng.integers(len(group)))]
        frame_indices = np.sort(rng.choice(self.num_frames(chosen), 2, replace=False))
        frames = frames_to_tensor(self._read_frames(chosen, frame_indices))     # (2, 3, H, W)
        draw = self.transform.draw(rng) if self.transform is not None else None
        if draw is not None:
            frames = self.transform.apply(frames, draw)
        item = {"source": frames[0], "driving": frames[1], "name": self.names[chosen]}
        if self.labels is not None:
            rows = read_labels(self._label_paths[chosen], self.num_frames(chosen))[frame_indices]
            keypoints, visible = labels_to_normalized(rows, self.labels, self._stored_size(chosen), self.frame_shape)
            if draw is not None:
                keypoints, visible = Augmentation.apply_to_keypoints(keypoints, visible, draw, self.labels.mirror)
            item |= {"source_keypoints": torch.from_numpy(keypoints[0]), "driving_keypoints": torch.from_numpy(
                keypoints[1]), "source_visible": torch.from_numpy(visible[0]),
                "driving_visible": torch.from_numpy(visible[1])}
        return item

    def _read_frames(self, index: int, frame_indices: np.ndarray) -> np.ndarray:
        """Frames ``frame_indices`` of video ``index``; whatever fails while decoding them is a VideoError naming
        the file, so that training can skip the sample (modules/data/training_loader.py)."""
        try:
            return self.video(index).read(frame_indices)
        except (VideoError, MemoryError):
            raise
        except Exception as error:   # a decoder's own exception (PIL, numpy) on a damaged or changed file
            raise VideoError(self.videos[index], f"cannot read frames {frame_indices.tolist()} "
                                                 f"({type(error).__name__}: {error})") from None

    def _stored_size(self, index: int) -> tuple[int, int]:
        """(H, W) of video ``index`` as stored (labels are in its pixels), read once per process."""
        if index not in self._stored_sizes:
            frame = open_video(self.videos[index], None, self._infos[index]).read([0])
            self._stored_sizes[index] = tuple(frame.shape[1:3])
        return self._stored_sizes[index]

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, item_rng(self.random_seed, self.epoch, index))


class DatasetRepeater(Dataset):
    """``num_repeats`` passes over a dataset as one epoch; each repeat draws its own frames and augmentation."""

    def __init__(self, dataset: FramesDataset, num_repeats: int):
        if num_repeats < 1:
            raise UserError(f"train_params.num_repeats: expected a positive integer, got {num_repeats}")
        self.dataset = dataset
        self.num_repeats = int(num_repeats)
        self._epoch = _SharedEpoch()

    @property
    def notes(self) -> list[str]:
        return self.dataset.notes

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.set(epoch)
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_repeats * len(self.dataset)

    def sample(self, index: int, rng: np.random.Generator) -> dict:
        return self.dataset.sample(index % len(self.dataset), rng)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range ({len(self)} items)")
        # The generator follows the repeated index, so the repeats of one video differ.
        return self.sample(index, item_rng(self.dataset.random_seed, self.epoch, index))


# ----------------------------------------------------------------------------------------------------------
# Animation pairs

class PairedDataset(Dataset):
    """(source video, driving video) pairs for animation, from the dataset's pairs_list or drawn at random.

    Items: {"source_video", "driving_video": float32 (T, 3, H, W) in [0, 1], "source_name", "driving_name"}.
    """

    def __init__(self, initial_dataset: FramesDataset, number_of_pairs: int, seed: int = 0):
        self.initial_dataset = dataset = initial_dataset
        self.pairs = self._pairs_from_csv(dataset, number_of_pairs) if dataset.pairs_list is not None else \
            self._random_pairs(dataset, number_of_pairs, seed)

    @staticmethod
    def _pairs_from_csv(dataset: FramesDataset, number_of_pairs: int) -> list[tuple[int, int]]:
        # Names without extension (this project) or with it (FOMM's csv files name "xxx.mp4" entries).
        lookup: dict[str, int] = {}
        for index, (name, path) in enumerate(zip(dataset.names, dataset.videos)):
            lookup.setdefault(name, index)
            lookup.setdefault(os.path.basename(os.path.normpath(path)), index)
        rows = read_pairs_csv(dataset.pairs_list)
        kept = [(lookup[s], lookup[d]) for s, d in rows if s in lookup and d in lookup]
        missing = [s if s not in lookup else d for s, d in rows if s not in lookup or d not in lookup]
        if rows and not kept:
            raise UserError(f"{dataset.pairs_list}: none of its {len(rows)} pairs names two videos of "
                            f"{dataset.folder} (first: {rows[0][0]!r}, {rows[0][1]!r}); is pairs_list the csv "
                            f"of this dataset?")
        if missing:
            warnings.warn(f"{dataset.pairs_list}: {len(missing)} of {len(rows)} pairs skipped, they name videos not "
                          f"in {dataset.folder} (first: {missing[0]!r})", DatasetWarning, stacklevel=3)
        return kept[:number_of_pairs]

    @staticmethod
    def _random_pairs(dataset: FramesDataset, number_of_pairs: int, seed: int) -> list[tuple[int, int]]:
        if len(dataset.videos) < 2:
            warnings.warn(f"{dataset.folder}: one video only, it drives itself", DatasetWarning, stacklevel=3)
            return [(0, 0)][:number_of_pairs]
        return random_pairs(dataset.ids, number_of_pairs, seed)

    def __len__(self) -> int:
        return len(self.pairs)

    def pair(self, index: int) -> tuple[int, int]:
        """(source index, driving index) into ``initial_dataset.videos``: open them with ``.video(i)`` to stream."""
        return self.pairs[index]

    def __getitem__(self, index: int) -> dict:
        source, driving = self.pairs[index]
        dataset = self.initial_dataset
        return {"source_video": frames_to_tensor(dataset.video(source).read_all()),
                "driving_video": frames_to_tensor(dataset.video(driving).read_all()),
                "source_name": dataset.names[source], "driving_name": dataset.names[driving]}
