"""A synthetic action dataset that only a network that sees time can solve.

Classes come in time-reversed pairs (MoveDown / MoveUp, Grow / Shrink, FadeIn / FadeOut, Converge / Diverge,
Fill / Drain). A video of the second class of a pair is a video of the first class played backwards, drawn
from the same distribution, so the frames of a clip taken as an unordered set say nothing about which of the
pair it is: only their order does. Every pair is symmetric under a horizontal flip (no left/right or
clockwise/anticlockwise classes), so the reference's flip augmentation never changes a label.

The videos are written in the UCF-101 layout, readable by any UCF-101 loader:

    OUT/<Class>/v_<Class>_gXX_cYY.avi
    OUT/ucfTrainTestlist/classInd.txt          "1 MoveDown" ... (1-based)
    OUT/ucfTrainTestlist/trainlist01.txt       "MoveDown/v_MoveDown_g03_c01.avi 1"
    OUT/ucfTrainTestlist/testlist01.txt        "MoveDown/v_MoveDown_g01_c01.avi" (no label, as in UCF-101)
    OUT/synthetic.json                         the parameters (a dataset with the same ones is not regenerated)

As in UCF-101's split 1, the test split takes whole groups (g01 .. g<test_groups>), so train and test never
share a group; every video draws its own scene (background, shape, colour, position, speed). With `pair_test`
(the default), the test video (g, c) of a pair's second class is the exact time reverse of the test video (g, c)
of its first class. Videos are coded intra-only at a fixed quantiser, so the reversed file decodes to exactly the
reversed frames, and with 25 frames (or 45, 65, ...: `SynthParams.mirrored_test_clips`) the reference's 10 test
clips of one are the reversed test clips of the other. A model blind to frame order (the temporal-depth-1 C3D:
per-frame convs and max pools over aligned frame blocks are symmetric under reversal) then gives both the same
video score and is right on at most one of the two: chance within pairs, by construction.

Example:
    >>> from c3dnet.data.synthetic import SynthParams, generate_synthetic
    >>> root = generate_synthetic("data/synthetic")  # the demo's: 10 classes, 250 train / 100 test  # doctest: +SKIP
    >>> tiny = generate_synthetic("data/tiny", SynthParams(num_pairs=1, videos_per_class=4, groups=2,
    ...                                                     test_groups=1))                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from c3dnet.data.encode import write_video
from c3dnet.errors import DataError
from c3dnet.fileio import atomic_write_text
from c3dnet.log import get_logger

log = get_logger(__name__)

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so a cached dataset from an older generator is not reused."""

PARAMS_FILE = "synthetic.json"
SPLITS_DIR = "ucfTrainTestlist"


# ----------------------------------------------------------------------------------------------------------
# Rendering: scenes and the forward action of each pair. All sizes are fractions of the frame, so any
# resolution works; shapes are drawn from signed distances with a one-pixel soft edge, so sub-pixel motion is
# smooth rather than jumping a pixel every few frames.


@dataclass(frozen=True)
class Scene:
    """What stays fixed within a video: background image, object shape and colour."""

    background: np.ndarray  # (H, W, 3) float32, 0..255
    shape: int  # index into SHAPES
    color: np.ndarray  # (3,) float32


def _disc(dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    return np.sqrt(dy * dy + dx * dx) - r


def _square(dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    return np.maximum(np.abs(dy), np.abs(dx)) - 0.85 * r


def _diamond(dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    return (np.abs(dy) + np.abs(dx) - 1.2 * r) / np.sqrt(2.0)


def _ring(dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    return np.abs(np.sqrt(dy * dy + dx * dx) - 0.7 * r) - 0.3 * r - 0.5


def _cross(dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    bar = 0.35 * r + 0.5
    vertical = np.maximum(np.abs(dx) - bar, np.abs(dy) - r)
    horizontal = np.maximum(np.abs(dy) - bar, np.abs(dx) - r)
    return np.minimum(vertical, horizontal)


SHAPES: tuple[Callable[[np.ndarray, np.ndarray, float], np.ndarray], ...] = (_disc, _square, _diamond, _ring, _cross)
"""Signed distance (pixels, negative inside) of each object shape, centred at 0 with radius r. All are
symmetric under a horizontal flip."""


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def make_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """A random static background (colour gradient plus smooth blotches) and a contrasting object colour."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1.0) / 2.0  # (H, W) in [0, 1]
    background = c0 + (c1 - c0) * 0.5 * ramp[..., None]
    # Smooth blotches: coarse noise upsampled by repetition then box-blurred, a static texture.
    coarse = rng.normal(0.0, 18.0, (height // 8 + 2, width // 8 + 2, 3))
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
    for axis in (0, 1):
        texture = (texture + np.roll(texture, 2, axis) + np.roll(texture, -2, axis) + np.roll(texture, 4, axis)
                   + np.roll(texture, -4, axis)) / 5.0
    background = np.clip(background + texture, 0, 255).astype(np.float32)
    bg_luma = _luma(background.mean(axis=(0, 1)))
    for _ in range(100):  # a colour that stands out from the background (the loop ends almost at once)
        color = rng.uniform(0, 255, 3)
        if abs(_luma(color) - bg_luma) > 70:
            break
    else:
        color = np.full(3, 255.0 if bg_luma < 128 else 0.0)
    return Scene(background, int(rng.integers(len(SHAPES))), color.astype(np.float32))


def _composite(frames: np.ndarray, scene: Scene, sdf: np.ndarray, opacity: float | np.ndarray = 1.0) -> None:
    """Blend the scene's colour into `frames` (T, H, W, 3) where the signed distances `sdf` (T, H, W) are < 0."""
    alpha = np.clip(0.5 - sdf, 0.0, 1.0) * np.reshape(opacity, (-1, 1, 1))  # (T, H, W)
    frames += alpha[..., None] * (scene.color - frames)


def _grid(n: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame progress p (T, 1, 1) from 0 to 1, and pixel-centre coordinates yy, xx (1, H, W)."""
    p = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None, None]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return p, yy[None] + 0.5, xx[None] + 0.5


def _lerp(a: float, b: float, p: np.ndarray) -> np.ndarray:
    return a + (b - a) * p


def render_move_down(scene: Scene, rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """The object travels down 40..60% of the frame, drifting a little sideways."""
    p, yy, xx = _grid(n, height, width)
    r = rng.uniform(0.08, 0.13) * height
    travel = rng.uniform(0.4, 0.6) * height
    y0 = rng.uniform(0.5 * height - travel / 2 - 0.05 * height, 0.5 * height - travel / 2 + 0.05 * height)
    x0 = rng.uniform(0.3, 0.7) * width
    drift = rng.uniform(-0.1, 0.1) * width
    sdf = SHAPES[scene.shape](yy - _lerp(y0, y0 + travel, p), xx - _lerp(x0, x0 + drift, p), r)
    frames = np.broadcast_to(scene.background, (n, height, width, 3)).copy()
    _composite(frames, scene, sdf)
    return frames


def render_grow(scene: Scene, rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """The object swells from small to large in place."""
    p, yy, xx = _grid(n, height, width)
    r0, r1 = rng.uniform(0.04, 0.07) * height, rng.uniform(0.2, 0.27) * height
    cy, cx = rng.uniform(0.38, 0.62) * height, rng.uniform(0.38, 0.62) * width
    radius = _lerp(r0, r1, p)  # (T, 1, 1): the unit shape's distance field, scaled per frame
    sdf = SHAPES[scene.shape]((yy - cy) / radius, (xx - cx) / radius, 1.0) * radius
    frames = np.broadcast_to(scene.background, (n, height, width, 3)).copy()
    _composite(frames, scene, sdf)
    return frames


def render_fade_in(scene: Scene, rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """A still object appears: its opacity rises from nearly 0 to nearly 1."""
    _, yy, xx = _grid(n, height, width)
    r = rng.uniform(0.12, 0.2) * height
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    opacity = np.linspace(rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0), n)
    sdf = np.broadcast_to(SHAPES[scene.shape](yy - cy, xx - cx, r), (n, height, width))
    frames = np.broadcast_to(scene.background, (n, height, width, 3)).copy()
    _composite(frames, scene, sdf, opacity)
    return frames


def render_converge(scene: Scene, rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """Two copies of the object, side by side, close in on each other (mirror-symmetric motion)."""
    p, yy, xx = _grid(n, height, width)
    r = rng.uniform(0.07, 0.11) * height
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.45, 0.55) * width
    d0, d1 = rng.uniform(0.3, 0.38) * width, r + rng.uniform(0.02, 0.06) * width
    dy = rng.uniform(-0.06, 0.06) * height  # one sits a little higher than the other
    half = _lerp(d0, d1, p)
    shape = SHAPES[scene.shape]
    sdf = np.minimum(shape(yy - cy - dy, xx - (cx - half), r), shape(yy - cy + dy, xx - (cx + half), r))
    frames = np.broadcast_to(scene.background, (n, height, width, 3)).copy()
    _composite(frames, scene, sdf)
    return frames


def render_fill(scene: Scene, rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """A bar standing on a fixed floor rises like a filling glass: the top edge climbs, the bottom stays."""
    p, yy, xx = _grid(n, height, width)
    half_w = rng.uniform(0.08, 0.14) * width
    cx = rng.uniform(0.35, 0.65) * width
    floor = rng.uniform(0.78, 0.86) * height
    top = _lerp(floor - rng.uniform(0.04, 0.1) * height, floor - rng.uniform(0.55, 0.68) * height, p)
    sdf = np.maximum(np.abs(xx - cx) - half_w, np.maximum(top - yy, yy - floor))  # (T, H, W)
    frames = np.broadcast_to(scene.background, (n, height, width, 3)).copy()
    _composite(frames, scene, sdf)
    return frames


@dataclass(frozen=True)
class ActionPair:
    """Two classes, the second the time reverse of the first; `render` draws a video of the first."""

    forward: str
    backward: str
    render: Callable[[Scene, np.random.Generator, int, int, int], np.ndarray]


PAIRS: tuple[ActionPair, ...] = (
    ActionPair("MoveDown", "MoveUp", render_move_down),
    ActionPair("Grow", "Shrink", render_grow),
    ActionPair("FadeIn", "FadeOut", render_fade_in),
    ActionPair("Converge", "Diverge", render_converge),
    ActionPair("Fill", "Drain", render_fill),
)


def class_names(num_pairs: int) -> list[str]:
    """Class names in label order: each pair's forward class, then its reverse."""
    return [name for pair in PAIRS[:num_pairs] for name in (pair.forward, pair.backward)]


# ----------------------------------------------------------------------------------------------------------
# The dataset on disk.


@dataclass(frozen=True)
class SynthParams:
    """Everything that determines a synthetic dataset (stored in `synthetic.json` beside the videos).

    Attributes:
        num_pairs: how many time-reversed class pairs (1..5), so 2 * num_pairs classes.
        videos_per_class: videos of each class, split into `groups` groups of equal size.
        groups: groups gXX per class; the first `test_groups` form the test split (as UCF-101's split 1).
        test_groups: groups held out for testing.
        frames: frames per video (>= 17, so no 16-frame clip wraps); with 25, 45, 65 (and see
            `mirrored_test_clips`) the 10 test clips of a video and of its reverse mirror each other.
        height: frame height in pixels (even).
        width: frame width in pixels (even).
        seed: the dataset's random seed; the same parameters give byte-identical files.
        pair_test: each test video of a pair's second class is the exact reverse of the first class's.
        pair_train: the same for the training split (off: independent videos, twice the variety).
        quality: MPEG-4 quantiser (1 best .. 31).
        fps: frame rate stored in the files.
    """

    num_pairs: int = 5
    videos_per_class: int = 35
    groups: int = 7
    test_groups: int = 2
    frames: int = 25
    height: int = 40
    width: int = 40
    seed: int = 0
    pair_test: bool = True
    pair_train: bool = False
    quality: int = 2
    fps: float = 25.0

    def __post_init__(self) -> None:
        if not 1 <= self.num_pairs <= len(PAIRS):
            raise ValueError(f"num_pairs must be in 1..{len(PAIRS)}, got {self.num_pairs}")
        if self.groups < 2 or not 1 <= self.test_groups < self.groups:
            raise ValueError(f"need groups >= 2 and 1 <= test_groups < groups, got {self.groups}, {self.test_groups}")
        if self.videos_per_class < self.groups or self.videos_per_class % self.groups:
            raise ValueError(f"videos_per_class ({self.videos_per_class}) must be a positive multiple of "
                             f"groups ({self.groups})")
        if self.frames < 17:
            raise ValueError(f"frames must be >= 17 so a 16-frame clip never wraps around, got {self.frames}")
        if self.height < 16 or self.width < 16 or self.height % 2 or self.width % 2:
            raise ValueError(f"height and width must be even and >= 16, got {self.height}x{self.width}")

    @property
    def clips_per_group(self) -> int:
        return self.videos_per_class // self.groups

    @property
    def mirrored_test_clips(self) -> bool:
        """Whether the reference's 10 test clips of a video are exactly the reversed clips of its reverse.

        Clip k of the reversed video covers frames n - 16 - s_k .. n - 1 - s_k of the original, so the clip
        sets mirror when the start frames s satisfy s_k = n - 16 - s_{9-k} (true for 25, 45, 65, ... and many
        other lengths, false for e.g. 19 or 27).
        """
        from c3dnet.data import sampling

        starts = sampling.test_start_frames(self.frames, 16, 10)
        return bool(np.array_equal(starts, (self.frames - 16) - starts[::-1]))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SynthParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class VideoSpec:
    """One video to write: which pair, class, group and clip, and whether it is the reversed stream."""

    relpath: str  # "<Class>/v_<Class>_gXX_cYY.avi"
    label: int  # 0-based
    pair: int
    group: int  # 1-based, as in the file name
    clip: int  # 1-based
    source: int  # 0: render the forward class; 1: an independent draw for the backward class
    reverse: bool
    test: bool


def video_specs(params: SynthParams) -> list[VideoSpec]:
    """Every video of the dataset, class by class, group by group."""
    specs = []
    for pair_index, pair in enumerate(PAIRS[: params.num_pairs]):
        for backward, name in enumerate((pair.forward, pair.backward)):
            for group in range(1, params.groups + 1):
                test = group <= params.test_groups
                paired = params.pair_test if test else params.pair_train
                for clip in range(1, params.clips_per_group + 1):
                    specs.append(VideoSpec(
                        relpath=f"{name}/v_{name}_g{group:02d}_c{clip:02d}.avi",
                        label=2 * pair_index + backward,
                        pair=pair_index,
                        group=group,
                        clip=clip,
                        source=0 if paired else backward,
                        reverse=bool(backward),
                        test=test,
                    ))
    return specs


def render_video(params: SynthParams, spec: VideoSpec) -> np.ndarray:
    """The frames (T, H, W, 3) uint8 of one video; depends only on the seed and the video's identity."""
    # The same key for a test video and its paired reverse: both render the same forward video.
    rng = np.random.default_rng([params.seed, spec.pair, spec.group, spec.clip, spec.source])
    h, w = params.height, params.width
    scene = make_scene(rng, h, w)
    frames = PAIRS[spec.pair].render(scene, rng, params.frames, h, w)
    frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(frames[::-1]) if spec.reverse else frames


def _write_one(args: tuple[str, SynthParams, VideoSpec]) -> None:
    root, params, spec = args
    write_video(Path(root) / spec.relpath, render_video(params, spec), fps=params.fps, quality=params.quality)


def read_params(root: str | os.PathLike[str]) -> SynthParams | None:
    """The parameters of the complete synthetic dataset at `root`, or None if there is none (or it is partial)."""
    path = Path(root) / PARAMS_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.get("generator_version") != GENERATOR_VERSION:
            return None
        return SynthParams.from_dict(meta["params"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}: not a valid synthetic dataset description ({e}); delete the folder "
                        "or choose another one") from e


def _check_target(root: Path, params: SynthParams, overwrite: bool) -> None:
    """Refuse to mix a new dataset into a folder that holds something else."""
    if not root.exists():
        return
    if not root.is_dir():
        raise DataError(f"{root}: exists and is not a folder; choose another output path")
    ours = {name for pair in PAIRS for name in (pair.forward, pair.backward)} | {SPLITS_DIR, PARAMS_FILE}
    foreign = sorted(p.name for p in root.iterdir() if p.name not in ours and not p.name.startswith("."))
    if foreign:
        raise DataError(f"{root}: the folder holds other files ({', '.join(foreign[:5])}); "
                        "give an empty or new folder for the synthetic dataset")
    old_path = root / PARAMS_FILE
    if old_path.is_file() and not overwrite:
        old = read_params(root)
        raise DataError(f"{root}: holds a synthetic dataset made with other parameters ({old}); "
                        "choose another folder or pass --overwrite to replace it")
    if overwrite:
        # Only files this generator writes: class folders' v_*.avi, the split lists, the parameters.
        old_path.unlink(missing_ok=True)
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name in ours):
            for f in folder.glob("v_*.avi"):
                f.unlink()
            for f in folder.glob("*list0*.txt"):
                f.unlink()
            (folder / "classInd.txt").unlink(missing_ok=True)


def write_split_lists(root: Path, params: SynthParams) -> None:
    """`classInd.txt` (1-based), `trainlist01.txt` ("path label") and `testlist01.txt` ("path"), as UCF-101."""
    names = class_names(params.num_pairs)
    specs = video_specs(params)
    split_dir = root / SPLITS_DIR
    atomic_write_text(split_dir / "classInd.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    atomic_write_text(split_dir / "trainlist01.txt",
                      "".join(f"{s.relpath} {s.label + 1}\n" for s in specs if not s.test))
    atomic_write_text(split_dir / "testlist01.txt", "".join(f"{s.relpath}\n" for s in specs if s.test))


def generate_synthetic(
    out: str | os.PathLike[str],
    params: SynthParams | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic dataset to `out` (UCF-101 layout), or reuse it if it already holds these parameters.

    Args:
        out: dataset folder (created). A folder with the same parameters is reused as is.
        params: what to generate; `SynthParams()` by default.
        workers: processes that render and encode videos; 1 runs inline. By default one per 500 videos, up
            to 4 and the CPU count: a worker process costs a second or two to start (it imports the package),
            more than a few hundred small videos take to write inline.
        overwrite: replace a synthetic dataset with other parameters found at `out`.

    Returns:
        The dataset folder, readable as a UCF-101 download (split 1).

    Raises:
        DataError: `out` holds something else, or a dataset with other parameters and no `overwrite`.
    """
    params = params or SynthParams()
    root = Path(out)
    existing = read_params(root) if root.is_dir() else None
    if existing == params:
        log.info("synthetic dataset with these parameters already at %s; reusing it", root)
        return root
    _check_target(root, params, overwrite)
    if not params.mirrored_test_clips and params.pair_test:
        log.warning("frames=%d: the 10 test clips of a video and of its reverse are not mirror images, so a "
                    "model blind to time is not exactly at chance within pairs; 25, 45 or 65 frames are",
                    params.frames)

    specs = video_specs(params)
    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1, len(specs) // 500))
    jobs = [(str(root), params, spec) for spec in specs]
    log.info("generating %d synthetic videos (%d classes, %dx%d, %d frames) in %s",
             len(specs), 2 * params.num_pairs, params.height, params.width, params.frames, root)
    root.mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        for job in jobs:
            _write_one(job)
    else:
        import multiprocessing

        # spawn, not fork: the caller may hold torch's thread pools, which do not survive a fork.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    write_split_lists(root, params)
    meta = {
        "generator_version": GENERATOR_VERSION,
        "params": params.to_dict(),
        "class_names": class_names(params.num_pairs),
        "num_train": sum(not s.test for s in specs),
        "num_test": sum(s.test for s in specs),
    }
    # Written last: its presence marks a complete dataset.
    atomic_write_text(root / PARAMS_FILE, json.dumps(meta, indent=2) + "\n")
    return root
