"""modules/config/sections.py: shipped configs, FOMM / keypoint-mask legacy YAML, one-line errors, resolution changes."""
from __future__ import annotations

import functools
import glob
import os
import re
import warnings

import pytest
import yaml
from conftest import ROOT, config_path

from modules.config.loading import config_from_dict, load_config
from modules.config.sections import Config
from modules.core.errors import ConfigError, ConfigWarning

SHIPPED = sorted(glob.glob(os.path.join(ROOT, "config", "*.yaml")))

# FOMM's public config/taichi-256.yaml, key for key.
FOMM_TAICHI_256 = """\
dataset_params:
  root_dir: data/taichi-png
  frame_shape: [256, 256, 3]
  id_sampling: True
  pairs_list: data/taichi256.csv
  augmentation_params:
    flip_param: {horizontal_flip: True, time_flip: True}
    jitter_param: {brightness: 0.1, contrast: 0.1, saturation: 0.1, hue: 0.1}
model_params:
  common_params: {num_kp: 10, num_channels: 3, estimate_jacobian: True}
  kp_detector_params:
     temperature: 0.1
     block_expansion: 32
     max_features: 1024
     scale_factor: 0.25
     num_blocks: 5
  generator_params:
    block_expansion: 64
    max_features: 512
    num_down_blocks: 2
    num_bottleneck_blocks: 6
    estimate_occlusion_map: True
    dense_motion_params: {block_expansion: 64, max_features: 1024, num_blocks: 5, scale_factor: 0.25}
  discriminator_params: {scales: [1], block_expansion: 32, max_features: 512, num_blocks: 4, sn: True}
train_params:
  num_epochs: 100
  num_repeats: 150
  epoch_milestones: [60, 90]
  lr_generator: 2.0e-4
  lr_discriminator: 2.0e-4
  lr_kp_detector: 2.0e-4
  batch_size: 30
  scales: [1, 0.5, 0.25, 0.125]
  checkpoint_freq: 50
  transform_params: {sigma_affine: 0.05, sigma_tps: 0.005, points_tps: 5}
  loss_weights:
    generator_gan: 0
    discriminator_gan: 1
    feature_matching: [10, 10, 10, 10]
    perceptual: [10, 10, 10, 10, 10]
    equivariance_value: 10
    equivariance_jacobian: 10
reconstruction_params: {num_videos: 1000, format: '.mp4'}
animate_params:
  num_pairs: 50
  format: '.mp4'
  normalization_params: {adapt_movement_scale: False, use_relative_movement: True, use_relative_jacobian: True}
visualizer_params: {kp_size: 5, draw_border: True, colormap: 'gist_rainbow'}
"""


def load_quietly(path, load=load_config):
    """load_config (or config_from_dict), failing the test on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return load(path)


def read_yaml(name):
    with open(config_path(name), encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def write_yaml(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


FOMM_IGNORED = ["model_params.discriminator_params", "model_params.generator_params.estimate_occlusion_map",
                "model_params.generator_params.dense_motion_params", "train_params.lr_discriminator",
                "train_params.lr_kp_detector", "train_params.transform_params"] + [
    f"train_params.loss_weights.{k}" for k in ("generator_gan", "discriminator_gan", "feature_matching",
                                              "equivariance_value", "equivariance_jacobian")]


def keypoint_mask_dict(after_softmax, softmax_mask):
    """The keypoint-mask repository's layout: scale_factor in common_params, the mask chosen by two flags."""
    data = yaml.safe_load(FOMM_TAICHI_256)
    model = data["model_params"]
    model["common_params"]["scale_factor"] = model["kp_detector_params"].pop("scale_factor")
    model["kp_detector_params"].update(kp_after_softmax=after_softmax, softmax_mask=softmax_mask)
    return data


def load_recording(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = load_config(path)
    return config, [w for w in caught if issubclass(w.category, ConfigWarning)]


def config_error(tmp_path, data):
    """The ConfigError message for ``data`` written to a YAML file; checks the one-line, path-first form."""
    path = write_yaml(tmp_path, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        with pytest.raises(ConfigError) as info:
            load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(path + ": ")
    return message


# ---------------------------------------------------------------------------------------------------------
# 1. The shipped configs

@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_config_loads_without_warnings(path):
    assert len(SHIPPED) >= 3
    config = load_quietly(path)
    assert isinstance(config, Config) and config.path == path
    if path.endswith("-fomm.yaml"):
        assert config.family == "fomm" and config.model_params.align_corners is True
        # a saved config reloads to the same thing, without warnings
        assert config_from_dict(config.to_dict(), "saved").to_dict() == config.to_dict()
        return
    if path.endswith("-perturbed.yaml"):
        assert config.family == "perturbed" and config.model_params.perturbation_params.threshold == "median"
        assert config.train_params.loss_weights.mask == 100
        saved = config.to_dict()
        assert "lr_kp_detector" not in saved["train_params"] and "kp_detector_params" not in saved["model_params"]
        assert config_from_dict(saved, "saved").to_dict() == saved
        return
    if path.endswith("-detector.yaml"):
        assert config.family == "detector" and len(config.model_params.label_params.points) == \
            config.model_params.common_params.num_kp
        saved = config.to_dict()
        assert "perceptual" not in saved["train_params"]["loss_weights"] and "lr_generator" not in saved["train_params"]
        assert config_from_dict(saved, "saved").to_dict() == saved
        # its detector is the --checkpoint_with_kp of the heatmap config of the same prefix
        heatmap = load_quietly(path.replace("-detector.yaml", "-heatmap.yaml"))
        assert heatmap.model_params.detector_kwargs() == config.model_params.detector_kwargs()
        return
    assert config.family == "keypoint_mask"
    assert config.model_params.mask_params.kind == ("circles" if "-circles" in os.path.basename(path) else "heatmap")
    assert "lr_kp_detector" not in config.to_dict()["train_params"]       # FOMM's keys stay out of saved configs


def test_taichi_256_heatmap_values():
    config = load_quietly(config_path("taichi-256-heatmap.yaml"))
    assert config.dataset_params.size == (256, 256)
    assert config.model_params.common_params.scale_factor == 0.25
    assert config.model_params.mask_params.kind == "heatmap"
    high_res = config.model_params.generator_params.high_res
    assert (high_res.block_expansion, high_res.max_features, high_res.num_blocks) == (64, 1024, 5)
    assert config.train_params.loss_weights.perceptual == [10.0] * 5
    assert config.train_params.vgg_weights == "imagenet"


@pytest.mark.parametrize("name", ["tiny-heatmap.yaml", "tiny-circles.yaml"])
def test_tiny_configs_are_64px_with_random_vgg(name):
    config = load_quietly(config_path(name))
    assert config.dataset_params.size == (64, 64)
    assert config.train_params.vgg_weights == "random"


def test_tiny_heatmap_and_circles_share_the_detector():
    heatmap = load_quietly(config_path("tiny-heatmap.yaml")).model_params
    circles = load_quietly(config_path("tiny-circles.yaml")).model_params
    assert heatmap.common_params == circles.common_params
    assert heatmap.kp_detector_params == circles.kp_detector_params
    assert (heatmap.mask_params.kind, circles.mask_params.kind) == ("heatmap", "circles")


# ---------------------------------------------------------------------------------------------------------
# 2. FOMM's YAML layout

def test_fomm_yaml_maps_legacy_keys_and_warns(tmp_path):
    path = tmp_path / "taichi-256.yaml"
    path.write_text(FOMM_TAICHI_256, encoding="utf-8")
    config, caught = load_recording(str(path))
    model = config.model_params
    assert (model.common_params.scale_factor, model.generator_params.num_up_blocks) == (0.25, 2)
    assert model.mask_params.kind == "heatmap"
    assert config.train_params.batch_size == 30 and config.train_params.lr_generator == pytest.approx(2e-4)
    assert config.train_params.loss_weights.l1 == 0.0

    ignoring = [str(w.message) for w in caught if "ignoring keys" in str(w.message)]
    assert len(ignoring) == 1 and ignoring[0].startswith(f"{path}: ")
    for key in FOMM_IGNORED:
        assert key in ignoring[0]
    normalization = [str(w.message) for w in caught if "normalization_params" in str(w.message)]
    assert len(normalization) == 1
    assert normalization[0].startswith(f"{path}: ") and "heatmap" in normalization[0]
    assert len(caught) == 2


# ---------------------------------------------------------------------------------------------------------
# 3. The keypoint-mask repository's YAML layout

@pytest.mark.parametrize("after_softmax, softmax_mask, kind", [
    (True, False, "circles"), (False, True, "softmax"), (False, False, "heatmap")])
def test_keypoint_mask_flags_choose_mask_kind(tmp_path, after_softmax, softmax_mask, kind):
    path = write_yaml(tmp_path, keypoint_mask_dict(after_softmax, softmax_mask))
    config, caught = load_recording(path)
    assert config.model_params.mask_params.kind == kind
    assert config.model_params.common_params.scale_factor == 0.25
    assert config.model_params.generator_params.num_up_blocks == 2
    # Relative animation (normalization_params) only means something for circles.
    assert any("normalization_params" in str(w.message) for w in caught) == (kind != "circles")


def test_keypoint_mask_flags_both_true_is_an_error(tmp_path):
    message = config_error(tmp_path, keypoint_mask_dict(True, True))
    assert "kp_after_softmax" in message and "softmax_mask" in message


def test_scale_factor_in_both_places_must_agree(tmp_path):
    data = keypoint_mask_dict(False, False)
    data["model_params"]["kp_detector_params"]["scale_factor"] = 0.5
    message = config_error(tmp_path, data)
    assert "model_params.common_params.scale_factor" in message
    assert "model_params.kp_detector_params.scale_factor" in message
    assert "0.25" in message and "0.5" in message

    data["model_params"]["kp_detector_params"]["scale_factor"] = 0.25
    config, _ = load_recording(write_yaml(tmp_path, data, "same.yaml"))
    assert config.model_params.common_params.scale_factor == 0.25


# ---------------------------------------------------------------------------------------------------------
# 4. One-line errors

def taichi(**changes):
    """taichi-256-heatmap as a dict with ``changes`` (section__key=value; a value of None deletes the key)."""
    data = read_yaml("taichi-256-heatmap.yaml")
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        node = functools.reduce(dict.__getitem__, parents, data)
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return data


BAD_CONFIGS = {   # id: (changes to taichi-256-heatmap, substrings of the one-line ConfigError)
    "unknown-key": (dict(model_params__generator_params__foo=1),
                    ["unknown key 'model_params.generator_params.foo'", "num_up_blocks"]),
    "unknown-section": (dict(optimizer_params={"lr": 1}), ["unknown key 'optimizer_params'"]),
    "missing-key": (dict(train_params__batch_size=None), ["missing key 'train_params.batch_size'"]),
    "int-as-string": (dict(train_params__batch_size="eight"),
                      ["train_params.batch_size: expected an integer, got 'eight'"]),
    "bool-is-not-int": (dict(train_params__batch_size=True), ["train_params.batch_size", "an integer", "True"]),
    "float-is-not-int": (dict(train_params__batch_size=8.5), ["train_params.batch_size", "an integer", "8.5"]),
    "not-a-number": (dict(train_params__lr_generator="fast"), ["train_params.lr_generator", "a number"]),
    "unknown-mask-kind": (dict(model_params__mask_params__kind="squares"),
                          ["model_params.mask_params.kind", "'squares'", "'heatmap'", "'circles'", "'softmax'"]),
    "frame-shape-not-a-list": (dict(dataset_params__frame_shape=256), ["dataset_params.frame_shape", "a list"]),
    "channels": (dict(dataset_params__frame_shape=[256, 256, 1]), ["dataset_params.frame_shape", "num_channels"]),
    "frame-too-small": (dict(dataset_params__frame_shape=[64, 64, 3]),
                        ["dataset_params.frame_shape", "the smallest size that works is 128"]),
    "frame-does-not-fit": (dict(dataset_params__frame_shape=[200, 200, 3]),
                           ["dataset_params.frame_shape: height 200", "sizes that work near it: 128, 256"]),
    "num-up-blocks": (dict(model_params__generator_params__num_up_blocks=3),
                      ["model_params.generator_params.num_up_blocks"]),
    "scale-factor": (dict(model_params__common_params__scale_factor=0.3),
                     ["model_params.common_params.scale_factor", "0.3"]),
    "negative-lr": (dict(train_params__lr_generator=-1.0), ["train_params.lr_generator", "positive"]),
    "scale-not-1/n": (dict(train_params__scales=[1, 0.3]), ["train_params.scales", "1/n"]),
    "pyramid-too-deep": (dict(train_params__scales=[1, 0.0078125]), ["train_params.scales", "too small for VGG-19"]),
    "all-weights-zero": (dict(train_params__loss_weights__perceptual=[0, 0]), ["every weight is 0"]),
    "pad": (dict(model_params__kp_detector_params__pad=4), ["model_params.kp_detector_params.pad", "0 to 3"]),
    "cap-below-width": (dict(model_params__generator_params__max_features=32),
                        ["model_params.generator_params.max_features", "at least"]),
    "grey": (dict(model_params__common_params__num_channels=1, dataset_params__frame_shape=[256, 256, 1]),
             ["num_channels", "expected 3"]),
    "zero-width": (dict(model_params__generator_params__block_expansion=0),
                   ["model_params.generator_params.block_expansion", "positive"]),
    "negative-weight": (dict(train_params__loss_weights__perceptual=[10, -1]),
                        ["train_params.loss_weights", ">= 0"]),
}


@pytest.mark.parametrize("changes, expected", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_is_a_one_line_error(tmp_path, changes, expected):
    message = config_error(tmp_path, taichi(**changes))
    for text in expected:
        assert text in message


def test_lr_without_a_dot_is_read_as_a_number(tmp_path):
    path = tmp_path / "lr.yaml"
    text = open(config_path("taichi-256-heatmap.yaml"), encoding="utf-8").read()
    assert "lr_generator: 2.0e-4" in text
    path.write_text(text.replace("lr_generator: 2.0e-4", "lr_generator: 2e-4"), encoding="utf-8")
    assert yaml.safe_load(path.read_text())["train_params"]["lr_generator"] == "2e-4"   # YAML 1.1
    lr = load_quietly(str(path)).train_params.lr_generator
    assert lr == 0.0002 and isinstance(lr, float)


@pytest.mark.parametrize("text, where", [("a: [1, 2\n", r"line \d+, column \d+"),
                                         ("dataset_params:\n  root_dir: a: b\n", "line 2, column 14")])
def test_invalid_yaml_syntax(tmp_path, text, where):
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "\n" not in str(info.value)
    assert re.match(re.escape(f"{path}: not valid YAML at ") + where + ": ", str(info.value))


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(path)
    assert str(info.value).startswith(path)


def test_top_level_list_is_an_error(tmp_path):
    message = config_error(tmp_path, [read_yaml("taichi-256-heatmap.yaml")])
    assert "mapping" in message and "list" in message


# ---------------------------------------------------------------------------------------------------------
# 5. Resolution is a config change; to_dict round-trips

def test_taichi_256_at_512_px_loads(tmp_path):
    config = load_quietly(write_yaml(tmp_path, taichi(dataset_params__frame_shape=[512, 512, 3])))
    assert config.dataset_params.size == (512, 512)
    assert config.model_params == load_quietly(config_path("taichi-256-heatmap.yaml")).model_params


def tiny_with_two_high_res_blocks():
    data = read_yaml("tiny-heatmap.yaml")
    data["model_params"]["generator_params"]["high_res"]["num_blocks"] = 2
    return load_quietly(data, load=config_from_dict)


def test_tiny_with_fewer_high_res_blocks_round_trips():
    config = tiny_with_two_high_res_blocks()
    assert config.model_params.generator_params.high_res.num_blocks == 2 and config.path == "<dict>"
    saved = config.to_dict()
    assert "path" not in saved and saved["model_params"]["generator_params"]["high_res"]["num_blocks"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        again = config_from_dict(yaml.safe_load(yaml.safe_dump(saved)))
    assert again.to_dict() == saved
    assert again == config


def test_saved_heatmap_config_reloads_without_warnings():
    # A run folder saves to_dict(); reading it back must not warn about keys the user never wrote.
    load_quietly(tiny_with_two_high_res_blocks().to_dict(), load=config_from_dict)


COMMAND = re.compile(r"--config config/(?P<config>[\w.-]+)\.yaml .*--checkpoint_with_kp log/(?P<stage_one>[\w.-]+)-<ts>")


def _detector_settings(config: Config) -> dict:
    import dataclasses

    params = config.model_params
    common = dataclasses.asdict(params.common_params)
    return {"common_params": {key: common[key] for key in ("num_kp", "scale_factor", "estimate_jacobian")},
            "kp_detector_params": dataclasses.asdict(params.kp_detector_params)}


def test_every_stage_one_a_config_header_names_fits_that_config():
    """A header's command line 'python run.py --config config/A.yaml ... --checkpoint_with_kp log/B-<ts>' claims
    that B's checkpoint is a stage one for A: B's detector settings must then be A's (a claim that was false
    once: tiny-fomm.yaml's 4 keypoints at scale 0.25 offered to tiny-heatmap.yaml's 15 at 0.5)."""
    claims = []
    for path in SHIPPED:
        name = os.path.basename(path)[:-len(".yaml")]
        header = "".join(line for line in open(path) if line.startswith("#"))
        for match in COMMAND.finditer(header):
            target = name if match["config"] == "THIS" else match["config"]
            claims.append((path, target, match["stage_one"]))
    assert len(claims) >= 5                              # the parser still finds the shipped claims
    for path, target, stage_one in claims:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            wanted, given = (_detector_settings(load_config(config_path(f"{n}.yaml"))) for n in (target, stage_one))
        assert given == wanted, f"{path}: log/{stage_one}-<ts> is offered as the stage one of {target}.yaml"


def test_a_body_or_face_config_too_small_for_its_landmarks_warns_before_training():
    """64-px body frames get no AKD (the pose estimator needs 128 px): said when the config loads, not after a
    training run; the synthetic landmarks (any size) and 128-px faces stay quiet."""
    data = yaml.safe_load(open(config_path("tiny-heatmap.yaml")))
    data["metrics_params"] = {"landmarks": "body"}
    with pytest.warns(ConfigWarning, match=r"frames of 64 px are smaller than metrics_params.min_landmark_size "
                                           r"\(128\): this body model will get no AKD, MKR or AED"):
        config_from_dict(data, "small-body.yaml")
    for path in (config_path("tiny-heatmap.yaml"), config_path("faces-128-heatmap.yaml")):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConfigWarning)
            load_config(path)


def test_a_relative_regressor_path_in_an_evaluation_config_is_found_from_that_config(tmp_path, monkeypatch):
    """--config beside a checkpoint: a relative metrics_params.keypoint_regressor is looked for from the current
    folder, then from the config file's own repository (not the checkpoint's)."""
    from modules.config.loading import with_evaluation_sections

    repository = tmp_path / "repo"
    (repository / "config").mkdir(parents=True)
    (repository / "setup.py").write_text("")
    (repository / "data").mkdir()
    (repository / "data" / "regressor.pth").write_text("")
    settings = repository / "config" / "eval.yaml"
    settings.write_text("metrics_params:\n  landmarks: synthetic\n  keypoint_regressor: data/regressor.pth\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = yaml.safe_load(open(config_path("tiny-heatmap.yaml")))
    merged, changed = with_evaluation_sections(data, str(settings))
    assert merged["metrics_params"]["keypoint_regressor"] == str(repository / "data" / "regressor.pth")
    assert "metrics_params" in changed
