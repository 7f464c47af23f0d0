"""Synthetic articulated-figure videos with ground truth, for training and testing image animation on a CPU.

The renderer and the dataset writer; the command line is scripts/synthetic_dataset.py. From Python:
``from modules.data.synthetic import generate_dataset``.

Every video shows one 2D stick-and-capsule "person" (head, neck, torso, two-segment arms and legs, hands, feet)
on a static textured background. An *identity* is the body (limb lengths and widths, head size, torso width and
height), its colours and its background; a *clip* is one smooth joint-angle trajectory of that body. Everything
follows from the seed: the same seed and arguments give byte-identical files.

Layout written under ``ROOT`` (frame folders hold the PNGs only)::

    train/<video>/00000.png ...        RGB uint8 frames, size x size; <video> = <identity>#<clip>, e.g. id007#01
    test/<video>/00000.png ...         test identities (no identity is in both splits)
    keypoints/<split>/<video>.npy      float32 (T, K, 2): x, y in pixels; pixel centres at 0..size-1; order JOINTS
    poses/<split>/<video>.npy          float32 (T, P): the pose parameters, order POSE_PARAMS
    identities.json                    every identity's body, colours, background and split (+ JOINTS, POSE_PARAMS)
    test-pairs.csv                     header "source,driving": test videos of two different identities
    animation-gt/<source>__<driving>/00000.png ...
                                       ground truth animation: the source identity (body, colours, background)
                                       posed with the driving video's pose parameters at every frame; as many
                                       frames as the driving video. The source image of a pair is frame 0 of
                                       the source video.
    animation-gt-keypoints/<source>__<driving>.npy   float32 (T, K, 2), as keypoints/

Units: identity lengths and widths are fractions of the frame side (so one seed gives the same figures at any
size); pose angles are radians; the root offset is a fraction of the frame side. Image coordinates: x to the
right, y down. "l_" is the figure's left, drawn on the image's right (the figure faces the viewer); left limbs
are drawn slightly darker so a detector can tell the sides apart.

Defaults (4,608 frames of 64x64: 40 identities x 2 clips x 48 frames + 16 pairs x 48 frames; about 7 s on one
core) are sized for training a small model on a CPU in about an hour. Identity shapes vary by design: every body
dimension is its nominal value * (1 +- SHAPE_VARIATION), stratified over the identities so that even a small
dataset spans the range, times an overall body size; the standing height stays within STANDING_HEIGHT_RANGE of
the frame. Across 8 or more identities each limb's longest/shortest ratio is at least MIN_LIMB_LENGTH_RATIO.
Because of the stratification, changing the number of identities changes all of them (same seed or not).
"""
from __future__ import annotations

import colorsys
import csv
import dataclasses
import functools
import inspect
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from modules.data.keypoint_labels import write_points_file

# --------------------------------------------------------------------------------------------------- constants

JOINTS: tuple[str, ...] = (
    "head",         # centre of the head disk
    "neck",         # top of the torso axis
    "pelvis",       # bottom of the torso axis, the root of the figure
    "l_shoulder", "r_shoulder",
    "l_elbow", "r_elbow",
    "l_hand", "r_hand",
    "l_hip", "r_hip",
    "l_knee", "r_knee",
    "l_foot", "r_foot",   # the ankle, end of the shin
)
JOINT_INDEX: dict[str, int] = {name: i for i, name in enumerate(JOINTS)}
# The figure's left and right joints: a horizontal flip turns one into the other.
MIRRORED_JOINTS: tuple[tuple[str, str], ...] = tuple((name, "r" + name[1:]) for name in JOINTS if name.startswith("l_"))

# Pose parameters per frame. Angles in radians, root offset in fractions of the frame side.
#   torso_tilt: rotates the torso about the pelvis (positive leans the upper body to the image left);
#   head_tilt: the head about the neck, relative to the torso;
#   *_shoulder: upper arm from "hanging along the torso" (0) outwards/up (pi/2 = horizontal);
#   *_elbow: forearm relative to the upper arm, bending the same way (hand goes up/out);
#   *_hip: thigh from straight down (world vertical) outwards;  *_knee: shin relative to the thigh, inwards.
POSE_PARAMS: tuple[str, ...] = (
    "root_x", "root_y", "torso_tilt", "head_tilt",
    "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
    "l_hip", "r_hip", "l_knee", "r_knee",
)
# Anatomically sensible limits, also chosen so that every keypoint of every identity stays inside the frame.
POSE_RANGES: dict[str, tuple[float, float]] = {
    "root_x": (-0.05, 0.05), "root_y": (-0.03, 0.03),
    "torso_tilt": (-0.2, 0.2), "head_tilt": (-0.35, 0.35),
    "l_shoulder": (-0.15, 2.1), "r_shoulder": (-0.15, 2.1),
    "l_elbow": (0.0, 2.0), "r_elbow": (0.0, 2.0),
    "l_hip": (-0.1, 0.6), "r_hip": (-0.1, 0.6),
    "l_knee": (-0.2, 0.9), "r_knee": (-0.2, 0.9),
}

# Identity length field -> the joint pairs whose distance equals it (for checks of forward kinematics).
SEGMENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "torso_length": (("pelvis", "neck"),),
    "upper_arm_length": (("l_shoulder", "l_elbow"), ("r_shoulder", "r_elbow")),
    "forearm_length": (("l_elbow", "l_hand"), ("r_elbow", "r_hand")),
    "thigh_length": (("l_hip", "l_knee"), ("r_hip", "r_knee")),
    "shin_length": (("l_knee", "l_foot"), ("r_knee", "r_foot")),
}
LIMB_FIELDS: tuple[str, ...] = tuple(SEGMENTS)

# Nominal body (fractions of the frame side) before the per-identity variation.
NOMINAL_BODY: dict[str, float] = {
    "head_radius": 0.065, "neck_length": 0.03, "torso_length": 0.25,
    "upper_arm_length": 0.14, "forearm_length": 0.13, "thigh_length": 0.18, "shin_length": 0.17,
    "shoulder_width": 0.20, "hip_width": 0.12, "arm_width": 0.066, "leg_width": 0.08,
}
SHAPE_VARIATION = 0.25                      # every body dimension is nominal * U(1 - 0.25, 1 + 0.25)
NOMINAL_HEIGHT_RANGE = (0.70, 0.82)         # overall body size: the nominal body's height would be in this range
STANDING_HEIGHT_RANGE = (0.64, 0.86)        # head top to sole in the rest pose, fraction of the frame height
MAX_ARM_REACH = 0.38                        # torso axis to hand, arm stretched sideways (fraction of frame side)
MIN_LIMB_LENGTH_RATIO = 1.2                 # each limb's longest/shortest over >= 8 identities (about 1.5 over 40)
FOOT_LENGTH = 0.9                           # foot capsule length, in leg widths
SOLE = 0.4                                  # foot capsule radius, in leg widths (how far the sole is below the ankle)

BACKGROUND_KINDS: tuple[str, ...] = ("noise", "stripes", "checks")
MIN_BODY_BACKGROUND_DISTANCE = 90.0         # RGB distance between any body colour and the background's colours
MIN_PART_DISTANCE = 70.0                    # ... between torso and the parts drawn over or next to it

DEFAULT_SIZE = 64
DEFAULT_SUPERSAMPLE = 4                     # anti-aliasing: render at 4x4 samples per pixel and average
DEFAULTS: dict[str, int] = {
    "seed": 0, "size": DEFAULT_SIZE, "num_train_identities": 32, "num_test_identities": 8,
    "clips_per_identity": 2, "num_frames": 48, "num_pairs": 16, "supersample": DEFAULT_SUPERSAMPLE,
}
MIN_SIZE = 32                               # below this, limbs get thinner than about 1.5 px

# Independent random streams, so that e.g. more frames per clip do not change the identities.
_IDENTITY_STREAM, _TRAJECTORY_STREAM, _PAIR_STREAM = 0, 1, 2

# Everything generate_dataset writes at the top of ROOT (what --force replaces).
DATASET_ENTRIES: tuple[str, ...] = ("train", "test", "keypoints", "poses", "animation-gt",
                                    "animation-gt-keypoints", "identities.json", "test-pairs.csv")

Colour = tuple[int, int, int]


# ------------------------------------------------------------------------------------------------- identities

@dataclasses.dataclass(frozen=True)
class Background:
    """A static textured background: a blend of two colours by a smooth pattern, plus grain.

    kind: "noise" (a few random low-frequency plane waves), "stripes" or "checks" (soft-edged);
    frequency: cycles per frame side; angle: pattern orientation (radians); phase: pattern shift (radians);
    grain: standard deviation of the per-pixel grey grain (0-255 units); texture_seed: seeds noise and grain.
    """

    kind: str
    colour_a: Colour
    colour_b: Colour
    frequency: float
    angle: float
    phase: float
    grain: float
    texture_seed: int


@dataclasses.dataclass(frozen=True)
class Identity:
    """One body: lengths and widths in fractions of the frame side, colours RGB 0-255, and its background."""

    name: str
    head_radius: float
    neck_length: float
    torso_length: float
    upper_arm_length: float
    forearm_length: float
    thigh_length: float
    shin_length: float
    shoulder_width: float       # distance between the shoulder joints
    hip_width: float            # distance between the hip joints
    arm_width: float            # upper-arm thickness (the forearm tapers to 0.85 of it)
    leg_width: float            # thigh thickness (the shin tapers to 0.85 of it)
    skin_colour: Colour         # head, neck, hands
    torso_colour: Colour
    arm_colour: Colour          # sleeves
    leg_colour: Colour          # trousers; shoes are a darker shade
    background: Background

    @property
    def standing_height(self) -> float:
        """Head top to sole in the rest pose (all angles 0), fraction of the frame side."""
        return (2 * self.head_radius + self.neck_length + self.torso_length + self.thigh_length
                + self.shin_length + SOLE * self.leg_width)

    @property
    def pelvis_height(self) -> float:
        """y of the pelvis at root offset 0: the rest pose is centred vertically in the frame."""
        above = 2 * self.head_radius + self.neck_length + self.torso_length
        below = self.thigh_length + self.shin_length + SOLE * self.leg_width
        return 0.5 + (above - below) / 2

    def limb_lengths(self) -> dict[str, float]:
        """The articulated segments' lengths (fractions of the frame side), keyed like SEGMENTS."""
        return {name: getattr(self, name) for name in LIMB_FIELDS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists; floats round-trip exactly through json)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Identity":
        """Inverse of to_dict; extra keys (e.g. "split") are ignored."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for key in ("skin_colour", "torso_colour", "arm_colour", "leg_colour"):
            values[key] = tuple(values[key])
        bg = dict(data["background"])
        bg["colour_a"], bg["colour_b"] = tuple(bg["colour_a"]), tuple(bg["colour_b"])
        values["background"] = Background(**bg)
        return cls(**values)


def _hsv_colour(rng: np.random.Generator, hue: tuple[float, float], saturation: tuple[float, float],
                value: tuple[float, float]) -> Colour:
    h, s, v = rng.uniform(*hue) % 1.0, rng.uniform(*saturation), rng.uniform(*value)
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def _distance_to_segment(colour: Colour, a: Colour, b: Colour) -> float:
    """RGB distance from a colour to the blends of a and b (the background takes all of them)."""
    c, a_, b_ = (np.asarray(x, dtype=np.float64) for x in (colour, a, b))
    d = b_ - a_
    t = float(np.clip(np.dot(c - a_, d) / max(float(np.dot(d, d)), 1e-9), 0.0, 1.0))
    return float(np.linalg.norm(c - (a_ + t * d)))


def _contrasting_colour(draw: Callable[[], Colour], score: Callable[[Colour], float], tries: int = 200) -> Colour:
    """The first drawn colour scoring >= 1 (or the best of ``tries``): how bodies stay visible on any background."""
    best, best_score = (0, 0, 0), -math.inf
    for _ in range(tries):
        colour = draw()
        value = score(colour)
        if value >= 1.0:
            return colour
        if value > best_score:
            best, best_score = colour, value
    return best


def sample_background(rng: np.random.Generator) -> Background:
    """Muted, moderately contrasted colours, so the saturated body stands out from the texture."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    colour_a = _hsv_colour(rng, (0.0, 1.0), (0.05, 0.45), (0.25, 0.8))
    colour_b = _contrasting_colour(
        lambda: _hsv_colour(rng, (0.0, 1.0), (0.05, 0.45), (0.25, 0.8)),
        lambda c: min(np.linalg.norm(np.subtract(c, colour_a)) / 45.0,          # visible texture ...
                      80.0 / max(np.linalg.norm(np.subtract(c, colour_a)), 1e-9)))  # ... but not loud
    frequency = {"noise": rng.uniform(1.5, 3.0), "stripes": rng.uniform(3.0, 6.0),
                 "checks": rng.uniform(2.5, 4.5)}[kind]
    return Background(kind=kind, colour_a=colour_a, colour_b=colour_b, frequency=float(frequency),
                      angle=float(rng.uniform(0.0, math.pi)), phase=float(rng.uniform(0.0, 2 * math.pi)),
                      grain=float(rng.uniform(2.0, 6.0)), texture_seed=int(rng.integers(2 ** 31)))


def _sample_body_colours(rng: np.random.Generator, background: Background) -> dict[str, Colour]:
    def off_background(c: Colour) -> float:
        return _distance_to_segment(c, background.colour_a, background.colour_b) / MIN_BODY_BACKGROUND_DISTANCE

    def saturated() -> Colour:
        return _hsv_colour(rng, (0.0, 1.0), (0.5, 0.95), (0.45, 0.95))

    skin = _contrasting_colour(lambda: _hsv_colour(rng, (0.02, 0.11), (0.2, 0.65), (0.3, 1.0)),
                               off_background)
    torso = _contrasting_colour(saturated, lambda c: min(
        off_background(c), np.linalg.norm(np.subtract(c, skin)) / MIN_PART_DISTANCE))
    arm = _contrasting_colour(saturated, lambda c: min(
        off_background(c), np.linalg.norm(np.subtract(c, torso)) / MIN_PART_DISTANCE,
        np.linalg.norm(np.subtract(c, skin)) / MIN_PART_DISTANCE))
    leg = _contrasting_colour(lambda: _hsv_colour(rng, (0.0, 1.0), (0.3, 0.9), (0.3, 0.85)),
                              lambda c: min(off_background(c),
                                            np.linalg.norm(np.subtract(c, torso)) / MIN_PART_DISTANCE))
    return {"skin_colour": skin, "torso_colour": torso, "arm_colour": arm, "leg_colour": leg}


# The body dimensions that vary, plus the overall size: one quantile each (stratified over a dataset).
_SHAPE_DIMENSIONS: tuple[str, ...] = tuple(NOMINAL_BODY) + ("body_size",)
# Dimensions that scale with the body size (thicknesses do not: they vary on their own).
_SCALED_WITH_SIZE = ("head_radius", "neck_length", "torso_length", "upper_arm_length", "forearm_length",
                     "thigh_length", "shin_length", "shoulder_width", "hip_width")
_ARMS = ("upper_arm_length", "forearm_length")


def _standing_height(body: dict[str, float]) -> float:
    return (2 * body["head_radius"] + body["neck_length"] + body["torso_length"] + body["thigh_length"]
            + body["shin_length"] + SOLE * body["leg_width"])


def body_dimensions(quantiles: Sequence[float]) -> dict[str, float]:
    """Body dimensions (fractions of the frame side) at ``quantiles`` in [0, 1], one per _SHAPE_DIMENSIONS entry.

    Each dimension is nominal * (1 +- SHAPE_VARIATION) and the lengths are scaled by an overall body size that
    makes the nominal body NOMINAL_HEIGHT_RANGE tall. Two clamps keep every figure inside the frame: the standing
    height stays within STANDING_HEIGHT_RANGE, and a stretched arm (shoulder joint to hand) reaches at most
    MAX_ARM_REACH from the torso axis.
    """
    q = dict(zip(_SHAPE_DIMENSIONS, (float(x) for x in quantiles)))
    body = {key: nominal * (1.0 - SHAPE_VARIATION + 2.0 * SHAPE_VARIATION * q[key])
            for key, nominal in NOMINAL_BODY.items()}
    low, high = NOMINAL_HEIGHT_RANGE
    scale = (low + (high - low) * q["body_size"]) / _standing_height(NOMINAL_BODY)
    for key in _SCALED_WITH_SIZE:
        body[key] *= scale
    sole = SOLE * body["leg_width"]
    height = _standing_height(body)
    clamped = min(max(height, STANDING_HEIGHT_RANGE[0]), STANDING_HEIGHT_RANGE[1])
    if clamped != height:
        for key in _SCALED_WITH_SIZE:
            body[key] *= (clamped - sole) / (height - sole)
    reach = body["shoulder_width"] / 2 + body["upper_arm_length"] + body["forearm_length"]
    if reach > MAX_ARM_REACH:
        arm_scale = (MAX_ARM_REACH - body["shoulder_width"] / 2) / (reach - body["shoulder_width"] / 2)
        for key in _ARMS:
            body[key] *= arm_scale
    return body


def sample_identity(rng: np.random.Generator, name: str = "id000",
                    quantiles: Optional[Sequence[float]] = None) -> Identity:
    """A random body, colours and background.

    ``quantiles`` (one in [0, 1) per entry of ``_SHAPE_DIMENSIONS``) place each body dimension within its range;
    sample_identities passes stratified ones so that a dataset covers the ranges. Without them they are uniform.
    """
    if quantiles is None:
        quantiles = rng.uniform(size=len(_SHAPE_DIMENSIONS))
    body = body_dimensions(quantiles)
    background = sample_background(rng)
    colours = _sample_body_colours(rng, background)
    return Identity(name=name, **{k: float(v) for k, v in body.items()}, **colours, background=background)


def _stratified_quantiles(rng: np.random.Generator, count: int, dimensions: int) -> np.ndarray:
    """(count, dimensions) in [0, 1): per column, one value in each of ``count`` equal bins, in random order."""
    bins = np.stack([rng.permutation(count) for _ in range(dimensions)], axis=1)
    return (bins + rng.uniform(size=(count, dimensions))) / count


def sample_identities(rng: np.random.Generator, count: int, names: Optional[Sequence[str]] = None
                      ) -> list[Identity]:
    """``count`` identities whose dimensions are stratified: a small dataset still spans short to long limbs."""
    names = list(names) if names is not None else [f"id{i:03d}" for i in range(count)]
    quantiles = _stratified_quantiles(rng, count, len(_SHAPE_DIMENSIONS))
    return [sample_identity(rng, names[i], quantiles[i]) for i in range(count)]


# ----------------------------------------------------------------------------------------------------- motion

MAX_KEYPOINT_STEP = 0.04      # per frame, fraction of the frame side, for the largest possible body


@dataclasses.dataclass(frozen=True)
class _Wave:
    """One pose parameter over time: mid + half_range * tanh(offset + sum of sinusoids)."""

    low: float
    high: float
    offset: float
    amplitudes: np.ndarray
    periods: np.ndarray
    phases: np.ndarray

    def __call__(self, t: np.ndarray) -> np.ndarray:
        raw = self.offset + (self.amplitudes * np.sin(2 * math.pi * t[:, None] / self.periods + self.phases)).sum(1)
        return (self.low + self.high) / 2 + (self.high - self.low) / 2 * np.tanh(raw)


@functools.lru_cache(maxsize=1)
def _largest_identity() -> Identity:
    """The body with every dimension at its maximum: the speed limit of trajectories is checked on it."""
    grey = (128, 128, 128)
    return Identity(name="largest", **body_dimensions([1.0] * len(_SHAPE_DIMENSIONS)), skin_colour=grey,
                    torso_colour=grey, arm_colour=grey, leg_colour=grey,
                    background=Background("noise", grey, grey, 1.0, 0.0, 0.0, 0.0, 0))


def _max_step(poses: np.ndarray) -> float:
    keypoints = trajectory_keypoints(_largest_identity(), poses, size=1)
    return float(np.linalg.norm(np.diff(keypoints, axis=0), axis=-1).max()) if len(poses) > 1 else 0.0


def sample_trajectory(rng: np.random.Generator, num_frames: int, *, components: int = 3,
                      period_range: tuple[float, float] = (48.0, 144.0)) -> np.ndarray:
    """Smooth pose parameters (num_frames, P) float32, order POSE_PARAMS.

    Each parameter is mid + half_range * tanh(offset + sum of ``components`` sinusoids) with random periods (in
    frames, so the speed does not depend on the clip length), phases and amplitudes: low-frequency, never outside
    POSE_RANGES, and smooth at the limits (tanh, no clipping kinks). A clip whose keypoints would move faster than
    MAX_KEYPOINT_STEP per frame (on the largest body) is played slower until they do not.
    """
    waves = []
    for name in POSE_PARAMS:
        low, high = POSE_RANGES[name]
        periods = rng.uniform(*period_range, size=components)
        phases = rng.uniform(0.0, 2 * math.pi, size=components)
        amplitudes = rng.dirichlet(np.ones(components)) * rng.uniform(0.8, 1.6)
        waves.append(_Wave(low, high, float(rng.uniform(-0.6, 0.6)), amplitudes, periods, phases))
    t = np.arange(num_frames, dtype=np.float64)
    for _ in range(50):
        # float32 is what is stored; rendering and keypoints use exactly the stored values.
        poses = np.stack([wave(t) for wave in waves], axis=1).astype(np.float32)
        if _max_step(poses) <= MAX_KEYPOINT_STEP:
            break
        t = t * 0.9
    return poses


def _unit(angle: float) -> np.ndarray:
    """Direction ``angle`` radians from straight down, turning towards the image right (x right, y down)."""
    return np.array([math.sin(angle), math.cos(angle)])


def _joint_positions(identity: Identity, pose: Sequence[float]) -> dict[str, np.ndarray]:
    """Joint positions in fractions of the frame side. Uses scalar ``math`` (exactly reproducible)."""
    p = dict(zip(POSE_PARAMS, (float(v) for v in pose)))
    tilt = p["torso_tilt"]
    up = _unit(math.pi + tilt)
    across = _unit(tilt + math.pi / 2)          # towards the image right, perpendicular to the torso
    pelvis = np.array([0.5 + p["root_x"], identity.pelvis_height + p["root_y"]])
    neck = pelvis + identity.torso_length * up
    joints = {"pelvis": pelvis, "neck": neck,
              "head": neck + (identity.neck_length + identity.head_radius) * _unit(math.pi + tilt + p["head_tilt"])}
    for side, sign in (("l", 1.0), ("r", -1.0)):       # the figure's left is on the image right
        # Shoulders sit half an arm width below the neck line so the arm's top meets the torso's top edge.
        shoulder = neck + sign * identity.shoulder_width / 2 * across - identity.arm_width / 2 * up
        upper_arm_angle = tilt + sign * p[f"{side}_shoulder"]
        elbow = shoulder + identity.upper_arm_length * _unit(upper_arm_angle)
        hand = elbow + identity.forearm_length * _unit(upper_arm_angle + sign * p[f"{side}_elbow"])
        hip = pelvis + sign * identity.hip_width / 2 * across
        thigh_angle = sign * p[f"{side}_hip"]           # legs hang from the world vertical, not the torso
        knee = hip + identity.thigh_length * _unit(thigh_angle)
        foot = knee + identity.shin_length * _unit(thigh_angle - sign * p[f"{side}_knee"])
        joints.update({f"{side}_shoulder": shoulder, f"{side}_elbow": elbow, f"{side}_hand": hand,
                       f"{side}_hip": hip, f"{side}_knee": knee, f"{side}_foot": foot})
    return joints


def forward_kinematics(identity: Identity, pose: Sequence[float], size: int = DEFAULT_SIZE) -> np.ndarray:
    """Keypoints (K, 2) float32 of ``identity`` in ``pose`` (P,), order JOINTS, in pixels of a size x size frame.

    Pixel centres are at integer coordinates: a fraction u of the frame side is at u * size - 0.5.
    """
    pose = np.asarray(pose)
    if pose.shape != (len(POSE_PARAMS),):
        raise ValueError(f"pose: expected shape ({len(POSE_PARAMS)},), got {pose.shape}")
    joints = _joint_positions(identity, pose)
    fractions = np.stack([joints[name] for name in JOINTS])
    return (fractions * size - 0.5).astype(np.float32)


def trajectory_keypoints(identity: Identity, poses: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """forward_kinematics of every frame: (T, P) -> (T, K, 2) float32."""
    return np.stack([forward_kinematics(identity, pose, size) for pose in poses])


# -------------------------------------------------------------------------------------------------- rendering

# Part labels painted into the supersampled label image (0 = background); palette rows in this order.
_BACKGROUND, _LEG_L, _LEG_R, _SHOE, _TORSO, _SKIN, _ARM_L, _ARM_R = range(8)
LEFT_SHADE = 0.8        # left limbs are darker: sides stay distinguishable when limbs cross
SHOE_SHADE = 0.5


@functools.lru_cache(maxsize=64)
def background_image(background: Background, size: int) -> np.ndarray:
    """The identity's static background, (size, size, 3) uint8, read-only (cached: the same for every frame)."""
    rng = np.random.default_rng(background.texture_seed)
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    x, y = coords[None, :], coords[:, None]
    cos, sin = math.cos(background.angle), math.sin(background.angle)
    u, v = x * cos + y * sin, -x * sin + y * cos
    wave = 2 * math.pi * background.frequency
    sharpness = 3.0                             # tanh(3 sin) = soft-edged square wave
    if background.kind == "stripes":
        weight = np.tanh(sharpness * np.sin(wave * u + background.phase)) / math.tanh(sharpness)
    elif background.kind == "checks":
        weight = (np.tanh(sharpness * np.sin(wave * u + background.phase))
                  * np.tanh(sharpness * np.sin(wave * v + background.phase))) / math.tanh(sharpness) ** 2
    elif background.kind == "noise":
        weight = np.zeros((size, size))
        for _ in range(6):
            angle, phase = rng.uniform(0.0, math.pi), rng.uniform(0.0, 2 * math.pi)
            frequency = background.frequency * rng.uniform(0.5, 1.5)
            weight += np.sin(2 * math.pi * frequency * (x * math.cos(angle) + y * math.sin(angle)) + phase)
        weight = 2 * (weight - weight.min()) / max(float(np.ptp(weight)), 1e-9) - 1
    else:
        raise ValueError(f"background.kind: expected one of {BACKGROUND_KINDS}, got {background.kind!r}")
    blend = (weight + 1) / 2
    a, b = np.asarray(background.colour_a, np.float64), np.asarray(background.colour_b, np.float64)
    image = a + blend[..., None] * (b - a) + rng.normal(0.0, background.grain, size=(size, size, 1))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    image.flags.writeable = False
    return image


class _Canvas:
    """A supersampled label image; shapes are tested only inside their bounding box (the speed-up)."""

    def __init__(self, size: int, supersample: int):
        self.size, self.supersample = size, supersample
        self.labels = np.zeros((size * supersample, size * supersample), dtype=np.uint8)

    def _samples(self, point: np.ndarray) -> np.ndarray:
        """Pixel coordinates -> sample coordinates (sample centres at integers)."""
        return (np.asarray(point, dtype=np.float64) + 0.5) * self.supersample - 0.5

    def _window(self, low: np.ndarray, high: np.ndarray):
        """Sample grid inside [low, high] (sample coordinates), or None when it misses the canvas."""
        n = self.labels.shape[0]
        x0, y0 = max(int(math.floor(low[0])), 0), max(int(math.floor(low[1])), 0)
        x1, y1 = min(int(math.ceil(high[0])), n - 1), min(int(math.ceil(high[1])), n - 1)
        if x0 > x1 or y0 > y1:
            return None
        xs = np.arange(x0, x1 + 1, dtype=np.float64)[None, :]
        ys = np.arange(y0, y1 + 1, dtype=np.float64)[:, None]
        return (slice(y0, y1 + 1), slice(x0, x1 + 1)), xs, ys

    def capsule(self, a: np.ndarray, b: np.ndarray, radius_a: float, radius_b: float, label: int) -> None:
        """A segment a-b (pixels) thickened to radius_a at a, tapering linearly to radius_b at b (pixels)."""
        a, b = self._samples(a), self._samples(b)
        ra, rb = radius_a * self.supersample, radius_b * self.supersample
        reach = max(ra, rb)
        window = self._window(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
        if window is None:
            return
        region, xs, ys = window
        d = b - a
        length2 = max(float(d @ d), 1e-12)
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0.0, 1.0)
        dx, dy = xs - a[0] - t * d[0], ys - a[1] - t * d[1]
        radius = ra + t * (rb - ra)
        self.labels[region][dx * dx + dy * dy <= radius * radius] = label

    def disk(self, centre: np.ndarray, radius: float, label: int) -> None:
        self.capsule(centre, centre, radius, radius, label)

    def polygon(self, corners: Sequence[np.ndarray], label: int) -> None:
        """A convex polygon (pixels), corners in either winding order."""
        points = [self._samples(c) for c in corners]
        window = self._window(np.min(points, axis=0), np.max(points, axis=0))
        if window is None:
            return
        region, xs, ys = window
        area2 = sum(p[0] * q[1] - q[0] * p[1] for p, q in zip(points, points[1:] + points[:1]))
        orientation = 1.0 if area2 >= 0 else -1.0
        inside = np.ones((ys.shape[0], xs.shape[1]), dtype=bool)
        for p, q in zip(points, points[1:] + points[:1]):
            cross = (q[0] - p[0]) * (ys - p[1]) - (q[1] - p[1]) * (xs - p[0])
            inside &= orientation * cross >= 0
        self.labels[region][inside] = label


def _palette(identity: Identity) -> np.ndarray:
    def shade(colour: Colour, factor: float) -> list[float]:
        return [c * factor for c in colour]

    rows = [[0, 0, 0], shade(identity.leg_colour, LEFT_SHADE), list(identity.leg_colour),
            shade(identity.leg_colour, SHOE_SHADE), list(identity.torso_colour), list(identity.skin_colour),
            shade(identity.arm_colour, LEFT_SHADE), list(identity.arm_colour)]
    return np.clip(np.rint(np.asarray(rows, dtype=np.float64)), 0, 255).astype(np.uint8)


def _draw_body(canvas: _Canvas, identity: Identity, keypoints: np.ndarray, size: int) -> None:
    """Paint the parts back to front: legs, torso, neck and head, then arms (in front, so gestures show)."""
    k = {name: keypoints[i].astype(np.float64) for i, name in enumerate(JOINTS)}
    arm_r, leg_r = identity.arm_width * size / 2, identity.leg_width * size / 2
    for side, sign, label in (("l", 1.0, _LEG_L), ("r", -1.0, _LEG_R)):
        canvas.capsule(k[f"{side}_hip"], k[f"{side}_knee"], leg_r, 0.92 * leg_r, label)
        canvas.capsule(k[f"{side}_knee"], k[f"{side}_foot"], 0.92 * leg_r, 0.85 * leg_r, label)
        toe = k[f"{side}_foot"] + np.array([sign * FOOT_LENGTH * identity.leg_width * size, 0.0])
        canvas.capsule(k[f"{side}_foot"], toe, SOLE * identity.leg_width * size,
                       SOLE * identity.leg_width * size, _SHOE)
    # Torso: a trapezoid from the neck line (shoulder joints) to just below the pelvis (hip joints + a leg radius).
    up = (k["neck"] - k["pelvis"]) / max(float(np.linalg.norm(k["neck"] - k["pelvis"])), 1e-9)
    across = np.array([-up[1], up[0]])
    if across[0] < 0:
        across = -across
    top, bottom = k["neck"], k["pelvis"] - 0.5 * leg_r * up
    half_top = identity.shoulder_width * size / 2
    half_bottom = identity.hip_width * size / 2 + leg_r
    canvas.polygon([top - half_top * across, top + half_top * across,
                    bottom + half_bottom * across, bottom - half_bottom * across], _TORSO)
    head_r = identity.head_radius * size
    canvas.capsule(k["neck"], k["head"], 0.32 * head_r, 0.32 * head_r, _SKIN)
    canvas.disk(k["head"], head_r, _SKIN)
    for side, label in (("l", _ARM_L), ("r", _ARM_R)):
        canvas.capsule(k[f"{side}_shoulder"], k[f"{side}_elbow"], arm_r, 0.92 * arm_r, label)
        canvas.capsule(k[f"{side}_elbow"], k[f"{side}_hand"], 0.92 * arm_r, 0.85 * arm_r, label)
        canvas.disk(k[f"{side}_hand"], 1.15 * arm_r, _SKIN)


@functools.lru_cache(maxsize=8)
def _sample_to_pixel(size: int, supersample: int, num_labels: int) -> np.ndarray:
    """For each sample of the supersampled grid: (index of its pixel) * num_labels, for one bincount."""
    pixel = np.arange(size, dtype=np.int64).repeat(supersample)
    index = (pixel[:, None] * size + pixel[None, :]) * num_labels
    index.flags.writeable = False
    return index


def _compose(labels: np.ndarray, palette: np.ndarray, background: np.ndarray, size: int, supersample: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Average each pixel's samples: count the samples of each label per pixel (one bincount), then mix the
    palette colours and the pixel's background by those counts. Integer arithmetic: exactly reproducible."""
    num_labels = len(palette)
    counts = np.bincount((_sample_to_pixel(size, supersample, num_labels) + labels).ravel(),
                         minlength=size * size * num_labels).reshape(size, size, num_labels)
    sums = counts[..., 1:] @ palette[1:].astype(np.int64) + counts[..., :1] * background.astype(np.int64)
    n = supersample * supersample
    image = ((sums + n // 2) // n).astype(np.uint8)
    return image, 2 * (n - counts[..., 0]) >= n


def render_keypoints(identity: Identity, keypoints: np.ndarray, size: int = DEFAULT_SIZE,
                     supersample: int = DEFAULT_SUPERSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``identity`` with its joints at ``keypoints`` (K, 2) pixels: (image uint8 HxWx3, body mask bool HxW)."""
    canvas = _Canvas(size, supersample)
    _draw_body(canvas, identity, keypoints, size)
    return _compose(canvas.labels, _palette(identity), background_image(identity.background, size), size,
                    supersample)


def render(identity: Identity, pose: Sequence[float], size: int = DEFAULT_SIZE,
           supersample: int = DEFAULT_SUPERSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """One anti-aliased frame of ``identity`` in ``pose``: (RGB uint8 (size, size, 3), body mask bool (size, size)).

    The mask marks pixels at least half covered by the body.
    """
    return render_keypoints(identity, forward_kinematics(identity, pose, size), size, supersample)


# ---------------------------------------------------------------------------------------------------- dataset

class DatasetArgumentError(ValueError):
    """A bad generate_dataset argument; ``parameter`` names it (the command line maps it to its option)."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter, self.message = parameter, message


def identity_of(video: str) -> str:
    """The identity of a video name ``<identity>#<clip>``."""
    return video.split("#", 1)[0]


def max_pairs(num_test_identities: int, clips_per_identity: int) -> int:
    """Number of distinct (source, driving) test-video pairs with different identities."""
    videos = num_test_identities * clips_per_identity
    return videos * (videos - clips_per_identity)


def sample_pairs(rng: np.random.Generator, videos: Sequence[str], num_pairs: int) -> list[tuple[str, str]]:
    """``num_pairs`` distinct (source, driving) pairs of videos of different identities, in candidate order."""
    candidates = [(s, d) for s in videos for d in videos if identity_of(s) != identity_of(d)]
    if num_pairs > len(candidates):
        raise DatasetArgumentError("num_pairs", f"at most {len(candidates)} pairs of different test identities "
                                                f"exist, got {num_pairs}")
    chosen = sorted(rng.choice(len(candidates), size=num_pairs, replace=False).tolist()) if num_pairs else []
    return [candidates[i] for i in chosen]


def _check_arguments(seed: int, size: int, num_train_identities: int, num_test_identities: int,
                     clips_per_identity: int, num_frames: int, num_pairs: int, supersample: int) -> None:
    minimums = {"seed": (seed, 0), "size": (size, MIN_SIZE), "num_train_identities": (num_train_identities, 1),
                "num_test_identities": (num_test_identities, 1), "clips_per_identity": (clips_per_identity, 1),
                "num_frames": (num_frames, 2), "num_pairs": (num_pairs, 0), "supersample": (supersample, 1)}
    for name, (value, minimum) in minimums.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DatasetArgumentError(name, f"expected an integer, got {value!r}")
        if value < minimum:
            raise DatasetArgumentError(name, f"expected an integer >= {minimum}, got {value}")
    if supersample > 8:
        raise DatasetArgumentError("supersample", f"expected at most 8 (samples per pixel side), got {supersample}")
    available = max_pairs(num_test_identities, clips_per_identity)
    if num_pairs > available:
        raise DatasetArgumentError("num_pairs", f"at most {available} pairs of test videos of different identities "
                                                f"exist ({num_test_identities} test identities, {clips_per_identity} "
                                                f"clips each), got {num_pairs}")


def _prepare_root(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise DatasetArgumentError("root", f"{root} exists and is not a folder")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty (use --force to replace the dataset in it)")
        # Remove only what a previous run wrote (stale videos would otherwise survive); leave anything else.
        for entry in DATASET_ENTRIES:
            path = root / entry
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _write_png(path: Path, image: np.ndarray) -> None:
    # Low compression: fast, and PIL writes no timestamps, so the bytes depend on the pixels only.
    Image.fromarray(image).save(path, format="PNG", compress_level=1)


def _write_frames(folder: Path, identity: Identity, poses: np.ndarray, size: int, supersample: int
                  ) -> np.ndarray:
    """Render and write one video; returns its keypoints (T, K, 2)."""
    folder.mkdir(parents=True)
    keypoints = trajectory_keypoints(identity, poses, size)
    for t, frame_keypoints in enumerate(keypoints):
        image, _ = render_keypoints(identity, frame_keypoints, size, supersample)
        _write_png(folder / f"{t:05d}.png", image)
    return keypoints


def _names(num_identities: int, clips_per_identity: int) -> tuple[list[str], Callable[[str, int], str]]:
    id_digits = max(3, len(str(num_identities - 1)))
    clip_digits = max(2, len(str(clips_per_identity - 1)))
    return ([f"id{i:0{id_digits}d}" for i in range(num_identities)],
            lambda identity, clip: f"{identity}#{clip:0{clip_digits}d}")


def plan_dataset(seed: int, num_train_identities: int, num_test_identities: int, clips_per_identity: int,
                 num_frames: int, num_pairs: int) -> tuple[list[Identity], dict[str, str], list, list]:
    """Everything random about a dataset, drawn before a pixel is rendered: (identities, split of each identity's
    name, videos as (split, identity, video name, poses (num_frames, P)), test pairs (source, driving))."""
    total = num_train_identities + num_test_identities
    names, video_name = _names(total, clips_per_identity)
    identities = sample_identities(np.random.default_rng([seed, _IDENTITY_STREAM]), total, names)
    split_of = {identity.name: ("train" if i < num_train_identities else "test")
                for i, identity in enumerate(identities)}
    videos: list[tuple[str, Identity, str, np.ndarray]] = []
    for i, identity in enumerate(identities):
        for clip in range(clips_per_identity):
            poses = sample_trajectory(np.random.default_rng([seed, _TRAJECTORY_STREAM, i, clip]), num_frames)
            videos.append((split_of[identity.name], identity, video_name(identity.name, clip), poses))
    test_videos = [video for split, _, video, _ in videos if split == "test"]
    pairs = sample_pairs(np.random.default_rng([seed, _PAIR_STREAM]), test_videos, num_pairs)
    return identities, split_of, videos, pairs


def demo_pair(size: int = DEFAULT_SIZE, supersample: int = DEFAULT_SUPERSAMPLE
              ) -> tuple[str, np.ndarray, np.ndarray]:
    """The default dataset's first test pair (``make demo``'s), rendered in memory without writing the dataset:
    (``<source>__<driving>``, the source video's frame 0 (size, size, 3), the driving video (T, size, size, 3))."""
    signature = inspect.signature(generate_dataset).parameters
    defaults = {name: signature[name].default for name in ("seed", "num_train_identities", "num_test_identities",
                                                           "clips_per_identity", "num_frames", "num_pairs")}
    _, _, videos, pairs = plan_dataset(**defaults)
    by_name = {video: (identity, poses) for _, identity, video, poses in videos}
    source, driving = pairs[0]
    identity, poses = by_name[source]
    first = render_keypoints(identity, trajectory_keypoints(identity, poses[:1], size)[0], size, supersample)[0]
    identity, poses = by_name[driving]
    frames = np.stack([render_keypoints(identity, points, size, supersample)[0]
                       for points in trajectory_keypoints(identity, poses, size)])
    return f"{source}__{driving}", first, frames


def generate_dataset(root: Union[str, Path], *, seed: int = 0, size: int = DEFAULT_SIZE,
                     num_train_identities: int = 32, num_test_identities: int = 8, clips_per_identity: int = 2,
                     num_frames: int = 48, num_pairs: int = 16, supersample: int = DEFAULT_SUPERSAMPLE,
                     overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write the whole dataset under ``root`` (layout in the module docstring) and return a summary.

    Identities id000.. are train first, then test. Raises DatasetArgumentError for a bad argument and
    FileExistsError when ``root`` is not empty and ``overwrite`` is False (True replaces DATASET_ENTRIES only).
    """
    _check_arguments(seed, size, num_train_identities, num_test_identities, clips_per_identity, num_frames,
                     num_pairs, supersample)
    root = Path(root)
    _prepare_root(root, overwrite)
    started = time.perf_counter()
    identities, split_of, videos, pairs = plan_dataset(seed, num_train_identities, num_test_identities,
                                                       clips_per_identity, num_frames, num_pairs)
    test_videos = [video for split, _, video, _ in videos if split == "test"]
    _write_metadata(root, seed, size, supersample, num_frames, clips_per_identity, identities, split_of)
    # keypoints/ is the labels layout any dataset can have (modules/data/keypoint_labels.py): name its points
    write_points_file(root / "keypoints", JOINTS, MIRRORED_JOINTS)
    from tqdm import tqdm  # imported here: the module itself needs only numpy and PIL

    with tqdm(total=len(videos) + len(pairs), desc="synthetic videos", unit="video", disable=not progress) as bar:
        for split, identity, video, poses in videos:
            keypoints = _write_frames(root / split / video, identity, poses, size, supersample)
            _save_array(root / "keypoints" / split / f"{video}.npy", keypoints)
            _save_array(root / "poses" / split / f"{video}.npy", poses)
            bar.update()
        by_name = {video: (identity, poses) for _, identity, video, poses in videos}
        with open(root / "test-pairs.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["source", "driving"])
            writer.writerows(pairs)
        for source, driving in pairs:
            # Ground truth: the source's identity (body, colours, background) with the driver's poses.
            keypoints = _write_frames(root / "animation-gt" / f"{source}__{driving}", by_name[source][0],
                                      by_name[driving][1], size, supersample)
            _save_array(root / "animation-gt-keypoints" / f"{source}__{driving}.npy", keypoints)
            bar.update()

    return {"root": str(root), "seed": seed, "size": size, "supersample": supersample,
            "train_identities": num_train_identities, "test_identities": num_test_identities,
            "train_videos": len(videos) - len(test_videos), "test_videos": len(test_videos),
            "frames_per_video": num_frames, "pairs": len(pairs),
            "frames_written": (len(videos) + len(pairs)) * num_frames,
            "seconds": round(time.perf_counter() - started, 2)}


def _save_array(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array, dtype=np.float32))


def _write_metadata(root: Path, seed: int, size: int, supersample: int, num_frames: int, clips_per_identity: int,
                    identities: Sequence[Identity], split_of: dict[str, str]) -> None:
    data = {
        "format": "kpmask-synthetic-1",
        "seed": seed, "size": size, "supersample": supersample, "num_frames": num_frames,
        "clips_per_identity": clips_per_identity,
        "units": "lengths and widths: fractions of the frame side; angles: radians; colours: RGB 0-255",
        "joints": list(JOINTS), "pose_params": list(POSE_PARAMS),
        "identities": {identity.name: {"split": split_of[identity.name], **identity.to_dict()}
                       for identity in identities},
    }
    with open(root / "identities.json", "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=1)
        stream.write("\n")


# ------------------------------------------------------------------------------------------------ reading back

def load_identities(root: Union[str, Path]) -> dict[str, Identity]:
    """The identities of a generated dataset, by name (as sampled: rendering them reproduces the frames)."""
    with open(Path(root) / "identities.json", encoding="utf-8") as stream:
        data = json.load(stream)
    return {name: Identity.from_dict(entry) for name, entry in data["identities"].items()}


def load_splits(root: Union[str, Path]) -> dict[str, str]:
    """Identity name -> "train" or "test"."""
    with open(Path(root) / "identities.json", encoding="utf-8") as stream:
        return {name: entry["split"] for name, entry in json.load(stream)["identities"].items()}


def load_pairs(root: Union[str, Path]) -> list[tuple[str, str]]:
    """The (source, driving) rows of test-pairs.csv."""
    with open(Path(root) / "test-pairs.csv", newline="", encoding="utf-8") as stream:
        return [(row["source"], row["driving"]) for row in csv.DictReader(stream)]


def read_video(folder: Union[str, Path]) -> np.ndarray:
    """The PNG frames of a frame folder, (T, H, W, 3) uint8."""
    return np.stack([np.asarray(Image.open(path).convert("RGB")) for path in sorted(Path(folder).glob("*.png"))])


def contact_sheet(root: Union[str, Path], path: Union[str, Path], *, videos: int = 6, frames: int = 6,
                  pairs: int = 2, scale: int = 2) -> Path:
    """A PNG grid for eyeballing a dataset: ``frames`` evenly spaced frames of the first train videos (one clip per
    identity), then per test pair a driving row and a ground-truth row that starts with the source image."""
    root, gap = Path(root), 2
    rows: list[list[Optional[np.ndarray]]] = []
    folders = sorted(p for p in (root / "train").iterdir() if int(p.name.split("#", 1)[1]) == 0)[:videos]
    for folder in folders:
        clip = read_video(folder)
        rows.append([None] + [clip[i] for i in np.linspace(0, len(clip) - 1, frames).round().astype(int)])
    for source, driving in load_pairs(root)[:pairs]:
        split = "test"
        drive = read_video(root / split / driving)
        truth = read_video(root / "animation-gt" / f"{source}__{driving}")
        picks = np.linspace(0, len(drive) - 1, frames).round().astype(int)
        rows.append([None] + [drive[i] for i in picks])
        rows.append([read_video(root / split / source)[0]] + [truth[i] for i in picks])
    tile = next(t for row in rows for t in row if t is not None).shape[0]
    columns = frames + 1
    sheet = np.full((len(rows) * (tile + gap) + gap, columns * (tile + gap) + gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            if image is not None:
                y, x = gap + r * (tile + gap), gap + c * (tile + gap)
                sheet[y:y + tile, x:x + tile] = image
    sheet = np.repeat(np.repeat(sheet, scale, axis=0), scale, axis=1)
    Image.fromarray(sheet).save(path)
    return Path(path)


# ---------------------------------------------------------------------------------------------- command line

# generate_dataset parameter -> command-line option (errors name the option the user typed).
