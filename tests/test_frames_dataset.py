"""frames_dataset.py: items, id sampling, augmentation, determinism across workers, bad videos, splits, pairs."""
from __future__ import annotations

import os
import warnings

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from test_video_io import flat_frames, write_folder, write_strip, write_video

from modules.config.sections import AugmentationParams, DatasetParams, FlipParams, JitterParams
from modules.core.errors import UserError
from modules.data.augmentation import Augmentation, AugmentationDraw
from modules.data.dataset import DatasetRepeater, DatasetWarning, FramesDataset, PairedDataset, item_rng

SHAPE = (32, 32)
ALL_AUGMENTATIONS = AugmentationParams(FlipParams(horizontal_flip=True, time_flip=True),
                                       JitterParams(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.2))


def decode(frame: torch.Tensor) -> tuple[int, int]:
    """(red level, frame index) of a flat_frames frame (3, H, W) in [0, 1]."""
    red, green = (float(frame[c].mean()) * 255 for c in (0, 1))
    return int(round((red - 20) / 40)) * 40 + 20, int(round(green / 20))


@pytest.fixture
def root(tmp_path):
    """train: alice (a folder and an mp4), bob, carol (gif), dave (strip); test: erin, frank. Red = video."""
    data = tmp_path / "data"
    train, test = data / "train", data / "test"
    write_folder(train / "alice#1", flat_frames([20] * 8))
    write_video(train / "alice#2.mp4", flat_frames([60] * 8))
    write_folder(train / "bob#1", flat_frames([100] * 8))
    imageio.mimwrite(train / "carol.gif", list(flat_frames([140] * 6)), duration=40, loop=0)
    write_strip(train / "dave.png", flat_frames([180] * 5))
    (train / "readme.txt").write_text("not a video")
    write_folder(test / "erin#1", flat_frames([220] * 4))
    write_video(test / "frank.mp4", flat_frames([100] * 5))
    return str(data)


RED = {"alice#1": 20, "alice#2": 60, "bob#1": 100, "carol": 140, "dave": 180}


def no_warnings(**kwargs) -> FramesDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)
        return FramesDataset(**kwargs)


# ----------------------------------------------------------------------------------------------------------
# Items

def test_training_items_are_two_distinct_frames_of_one_video(root):
    dataset = no_warnings(root_dir=root, frame_shape=SHAPE)
    assert dataset.names == ["alice#1", "alice#2", "bob#1", "carol", "dave"]
    assert [os.path.basename(p) for p in dataset.videos] == ["alice#1", "alice#2.mp4", "bob#1", "carol.gif", "dave.png"]
    assert len(dataset) == 5 and dataset.notes == []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item = dataset[index]
            assert set(item) == {"source", "driving", "name"}
            assert item["name"] == dataset.names[index]
            for key in ("source", "driving"):
                assert item[key].shape == (3, 32, 32) and item[key].dtype == torch.float32
            (red_s, frame_s), (red_d, frame_d) = decode(item["source"]), decode(item["driving"])
            assert red_s == red_d == RED[item["name"]]
            assert frame_s < frame_d < dataset.num_frames(index)          # sorted, distinct (no time flip)


def test_test_items_are_whole_videos_and_can_stream(root):
    dataset = no_warnings(root_dir=root, frame_shape=[32, 32, 3], is_train=False, id_sampling=True,
                          augmentation_params=ALL_AUGMENTATIONS)
    assert dataset.names == ["erin#1", "frank"] and dataset.transform is None
    item = dataset[1]
    assert set(item) == {"video", "name"} and item["name"] == "frank"
    assert item["video"].shape == (5, 3, 32, 32) and item["video"].dtype == torch.float32
    assert [decode(f)[1] for f in item["video"]] == list(range(5))
    video = dataset.video(1)
    assert video.num_frames == 5 and [len(b) for b in video.iter_frames(2)] == [2, 2, 1]


def test_id_sampling_over_folders_and_files(root):
    dataset = no_warnings(root_dir=root, frame_shape=SHAPE, id_sampling=True)
    assert len(dataset) == 4                                   # alice, bob, carol, dave
    seen = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        names = [dataset[i]["name"] for i in range(len(dataset))]
        assert names[0].startswith("alice#") and names[1:] == ["bob#1", "carol", "dave"]
        seen.add(names[0])
    assert seen == {"alice#1", "alice#2"}                      # both of alice's videos, folder and mp4


def test_frames_are_resized_to_frame_shape(root):
    dataset = no_warnings(root_dir=root, frame_shape=(16, 16), is_train=False)
    assert dataset[0]["video"].shape == (4, 3, 16, 16)


# ----------------------------------------------------------------------------------------------------------
# Augmentation

def mirrored_pair(tmp_path) -> str:
    """A 2-frame video whose second frame is the first mirrored: any one transform keeps that relation."""
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    first[:, :8] = (250, 10, 10)
    write_folder(tmp_path / "data" / "train" / "mirror", np.stack([first, first[:, ::-1]]))
    return str(tmp_path / "data")


def test_one_transform_hits_both_frames(tmp_path):
    root = mirrored_pair(tmp_path)
    dataset = FramesDataset(root, SHAPE, augmentation_params=ALL_AUGMENTATIONS)
    plain = FramesDataset(root, SHAPE)[0]["source"]
    changed = flipped = swapped = 0
    for epoch in range(16):
        dataset.set_epoch(epoch)
        item = dataset[0]
        source, driving = item["source"], item["driving"]
        assert source.shape == driving.shape == (3, 32, 32)
        assert 0 <= source.min() and source.max() <= 1 and 0 <= driving.min() and driving.max() <= 1
        torch.testing.assert_close(driving, source.flip(-1), atol=1e-5, rtol=0)
        changed += not any(torch.allclose(source, frame, atol=0.02) for frame in (plain, plain.flip(-1)))
        # The item is the plain pair put through the one draw that (seed, epoch, index) gives.
        rng = item_rng(0, epoch, 0)
        rng.integers(1), rng.choice(2, 2, replace=False)             # the video and frame choices come first
        draw = dataset.transform.draw(rng)
        expected = dataset.transform.apply(torch.stack([plain, plain.flip(-1)]), draw)
        torch.testing.assert_close(torch.stack([source, driving]), expected, atol=1e-6, rtol=0)
        flipped += draw.horizontal_flip
        swapped += draw.time_flip
    assert changed >= 12 and 0 < flipped < 16 and 0 < swapped < 16


def test_time_flip_swaps_source_and_driving(root):
    dataset = FramesDataset(root, SHAPE, augmentation_params=AugmentationParams(FlipParams(time_flip=True)))
    orders = set()
    for epoch in range(10):
        dataset.set_epoch(epoch)
        item = dataset[2]                                       # bob#1, a lossless folder
        frame_s, frame_d = decode(item["source"])[1], decode(item["driving"])[1]
        assert frame_s != frame_d
        orders.add(frame_s < frame_d)
    assert orders == {True, False}


def test_flips_and_jitter_ranges():
    frames = torch.rand(2, 3, 8, 8)
    augmentation = Augmentation(ALL_AUGMENTATIONS)
    identity = AugmentationDraw(False, False, (0, 1, 2, 3), 1.0, 1.0, 1.0, 0.0)
    torch.testing.assert_close(augmentation.apply(frames.clone(), identity), frames)
    torch.testing.assert_close(augmentation.apply(frames.clone(), identity._replace(horizontal_flip=True)),
                               frames.flip(-1))
    torch.testing.assert_close(augmentation.apply(frames.clone(), identity._replace(time_flip=True)), frames.flip(0))
    bright = augmentation.apply(frames.clone(), identity._replace(brightness=1.25))
    torch.testing.assert_close(bright, (frames * 1.25).clamp(0, 1))
    import torchvision.transforms.v2.functional as TF  # torchvision's semantics
    for key, function, value in [("contrast", TF.adjust_contrast, 0.7), ("saturation", TF.adjust_saturation, 1.3),
                                 ("hue", TF.adjust_hue, -0.15)]:
        torch.testing.assert_close(augmentation.apply(frames.clone(), identity._replace(**{key: value})),
                                   function(frames, value), atol=1e-6, rtol=0)
    rng = np.random.default_rng(0)
    draws = [augmentation.draw(rng) for _ in range(300)]
    for key, low, high in [("brightness", 0.7, 1.3), ("contrast", 0.7, 1.3), ("saturation", 0.7, 1.3),
                           ("hue", -0.2, 0.2)]:
        values = np.array([getattr(d, key) for d in draws])
        assert low <= values.min() < low + 0.05 and high - 0.05 < values.max() <= high, key
    assert 100 < sum(d.horizontal_flip for d in draws) < 200 and 100 < sum(d.time_flip for d in draws) < 200
    off = Augmentation(AugmentationParams())
    assert not any(off.draw(rng).horizontal_flip or off.draw(rng).time_flip for _ in range(20))
    torch.testing.assert_close(off(frames.clone(), rng), frames)
    with pytest.raises(UserError, match="jitter_param.hue"):
        Augmentation(AugmentationParams(jitter_param=JitterParams(hue=0.7)))


# ----------------------------------------------------------------------------------------------------------
# Determinism

def same_item(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)


def test_same_seed_epoch_index_same_item_and_global_rngs_untouched(root):
    first = FramesDataset(root, SHAPE, id_sampling=True, augmentation_params=ALL_AUGMENTATIONS, random_seed=7)
    second = FramesDataset(root, SHAPE, id_sampling=True, augmentation_params=ALL_AUGMENTATIONS, random_seed=7)
    other_seed = FramesDataset(root, SHAPE, id_sampling=True, augmentation_params=ALL_AUGMENTATIONS, random_seed=8)
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    first.set_epoch(3)
    second.set_epoch(3)
    other_seed.set_epoch(3)
    items = [first[i] for i in range(len(first))]
    assert all(same_item(a, second[i]) for i, a in enumerate(items))
    assert all(same_item(a, first.sample(i, item_rng(7, 3, i))) for i, a in enumerate(items))
    assert not all(same_item(a, other_seed[i]) for i, a in enumerate(items))
    first.set_epoch(4)
    assert not any(same_item(a, first[i]) for i, a in enumerate(items))      # jitter differs every time
    assert np.array_equal(np.random.get_state()[1], numpy_state) and torch.equal(torch.get_rng_state(), torch_state)


def batches(dataset, **kwargs) -> list[dict]:
    return list(torch.utils.data.DataLoader(dataset, batch_size=2, **kwargs))


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(same_item(x, y) for x, y in zip(a, b))


def test_workers_give_the_same_items_as_the_main_process(root):
    dataset = DatasetRepeater(FramesDataset(root, SHAPE, id_sampling=True, augmentation_params=ALL_AUGMENTATIONS), 2)
    dataset.set_epoch(5)
    reference = batches(dataset, num_workers=0)
    assert same_batches(batches(dataset, num_workers=2), reference)
    # Persistent workers copied the dataset once; the shared epoch still reaches them.
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, persistent_workers=True)
    dataset.set_epoch(0)
    epoch0 = list(loader)
    dataset.set_epoch(5)
    assert same_batches(list(loader), reference) and not same_batches(epoch0, reference)


# ----------------------------------------------------------------------------------------------------------
# Bad data and splits

def test_bad_videos_are_skipped_with_a_warning_naming_them(root):
    train = os.path.join(root, "train")
    junk = os.path.join(train, "x.mp4")
    with open(junk, "wb") as stream:
        stream.write(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    empty = os.path.join(train, "empty")
    os.makedirs(empty)
    strip = write_strip(os.path.join(train, "cut.png"), flat_frames([1] * 4))
    data = open(strip, "rb").read()
    open(strip, "wb").write(data[: len(data) // 2])
    single = write_folder(os.path.join(train, "single"), flat_frames([1]))
    with pytest.warns(DatasetWarning) as caught:
        dataset = FramesDataset(root, SHAPE)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 4
    for message, path in zip(messages, sorted([strip, empty, single, junk])):
        assert message.startswith(f"{path}: skipped, ")
    assert dataset.names == list(RED)
    assert "1 frame" in next(m for m in messages if m.startswith(single))
    no_warnings(root_dir=root, frame_shape=SHAPE, is_train=False)   # the test split is fine


def test_no_usable_video_and_missing_root_are_user_errors(tmp_path):
    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    (train / "x.mp4").write_bytes(b"not a video")
    with pytest.warns(DatasetWarning, match="x.mp4: skipped"):
        with pytest.raises(UserError, match=f"{train}: no usable video for the train split"):
            FramesDataset(tmp_path / "data", SHAPE)
    with pytest.raises(UserError, match=f"{tmp_path / 'data' / 'test'}: folder not found"):
        FramesDataset(tmp_path / "data", SHAPE, is_train=False)
    with pytest.raises(UserError, match=f"{tmp_path / 'nowhere'}: dataset folder not found"):
        FramesDataset(tmp_path / "nowhere", SHAPE)


def test_root_without_split_is_split_by_id_with_a_seed(tmp_path):
    root = tmp_path / "flat"
    for person in range(5):
        for clip in range(2):
            write_folder(root / f"p{person}#{clip}", flat_frames([40, 80]))
    train = FramesDataset(root, SHAPE)
    test = FramesDataset(root, SHAPE, is_train=False)
    again = FramesDataset(root, SHAPE, is_train=False)
    assert len(train.notes) == 1 and "no train/test folders" in train.notes[0] and "seed 0" in train.notes[0]
    assert test.notes and test.names == again.names
    assert len(test.names) == 2 and len({n.split("#")[0] for n in test.names}) == 1       # 20% of 5 ids
    assert sorted(train.names + test.names) == sorted(os.listdir(root))
    assert not {n.split("#")[0] for n in train.names} & {n.split("#")[0] for n in test.names}
    # The split does not follow the item seed: a run trained with another seed tests on the same videos.
    assert FramesDataset(root, SHAPE, is_train=False, random_seed=5).names == test.names


def test_from_config(root):
    params = DatasetParams(root_dir=root, frame_shape=[32, 32, 3], id_sampling=True,
                           augmentation_params=ALL_AUGMENTATIONS)
    train = FramesDataset.from_config(params, is_train=True, random_seed=3)
    assert len(train) == 4 and train.random_seed == 3 and train.transform is not None
    test = FramesDataset.from_config(params, is_train=False)
    assert len(test) == 2 and test.transform is None


# ----------------------------------------------------------------------------------------------------------
# Repeats and pairs

def test_repeater(root):
    dataset = FramesDataset(root, SHAPE, augmentation_params=ALL_AUGMENTATIONS, random_seed=2)
    repeated = DatasetRepeater(dataset, 3)
    assert len(repeated) == 15 and repeated.notes is dataset.notes
    repeated.set_epoch(4)
    assert dataset.epoch == 4
    items = [repeated[i] for i in range(15)]
    for i, item in enumerate(items):
        assert item["name"] == dataset.names[i % 5]
        assert same_item(item, dataset.sample(i % 5, item_rng(2, 4, i)))
    assert not any(same_item(items[i], items[i + 5]) for i in range(5))
    with pytest.raises(IndexError):
        repeated[15]


def write_pairs(path, text: str) -> str:
    with open(path, "w") as stream:
        stream.write(text)
    return str(path)


def paired_root(tmp_path) -> str:
    test = tmp_path / "data" / "test"
    for name, level in [("a#1", 20), ("a#2", 60), ("b#1", 100)]:
        write_folder(test / name, flat_frames([level] * 3))
    write_video(test / "c.mp4", flat_frames([140] * 4))
    return str(tmp_path / "data")


def test_pairs_from_csv(tmp_path):
    root = paired_root(tmp_path)
    pairs = write_pairs(tmp_path / "pairs.csv", "distance,source,driving\n0,a#1,b#1\n1,zzz,a#1\n2,c.mp4,a#2\n3,c,b#1\n")
    dataset = FramesDataset(root, SHAPE, is_train=False, pairs_list=pairs)
    with pytest.warns(DatasetWarning, match=r"pairs.csv: 1 of 4 pairs skipped, .*'zzz'"):
        paired = PairedDataset(dataset, number_of_pairs=10)
    assert [paired.pair(i) for i in range(len(paired))] == [(0, 2), (3, 1), (3, 2)]
    item = paired[1]
    assert (item["source_name"], item["driving_name"]) == ("c", "a#2")
    assert item["source_video"].shape == (4, 3, 32, 32) and item["driving_video"].shape == (3, 3, 32, 32)
    assert decode(item["driving_video"][0])[0] == 60
    with pytest.warns(DatasetWarning):
        assert len(PairedDataset(dataset, number_of_pairs=2)) == 2


def test_random_pairs_are_seeded_and_of_different_people(tmp_path):
    dataset = FramesDataset(paired_root(tmp_path), SHAPE, is_train=False)
    first = PairedDataset(dataset, number_of_pairs=6, seed=1)
    assert len(first) == 6 and first.pairs == PairedDataset(dataset, 6, seed=1).pairs
    assert len({tuple(PairedDataset(dataset, 6, seed=s).pairs) for s in range(5)}) > 1
    for source, driving in first.pairs:
        assert dataset.ids[source] != dataset.ids[driving]
    assert len(set(first.pairs)) == 6
    everything = PairedDataset(dataset, number_of_pairs=100)
    assert len(everything) == 10                               # 4 x 4 minus the 6 pairs within one id


def test_bad_pairs_csv_is_a_user_error(tmp_path):
    root = paired_root(tmp_path)
    missing = str(tmp_path / "missing.csv")
    with pytest.raises(UserError, match=f"{missing}: pairs list not found"):
        PairedDataset(FramesDataset(root, SHAPE, is_train=False, pairs_list=missing), 5)
    wrong = write_pairs(tmp_path / "wrong.csv", "src,drv\na#1,b#1\n")
    with pytest.raises(UserError, match=f"{wrong}: expected a csv whose header has the columns source and driving"):
        PairedDataset(FramesDataset(root, SHAPE, is_train=False, pairs_list=wrong), 5)
    other = write_pairs(tmp_path / "other.csv", "source,driving\nid032#00,id033#00\n")
    with pytest.raises(UserError, match=f"{other}: none of its 1 pairs names two videos of .*this dataset"):
        PairedDataset(FramesDataset(root, SHAPE, is_train=False, pairs_list=other), 5)
