"""Post-training int8 quantization for the CPU: a C3D and the user's own videos in, an OpenVINO IR folder out.

`quantize(model, videos, out)` does what `c3d quantize` does:

1. Clips from the videos, cut as `c3d test` cuts them (`ClipDataset` in test mode: evenly spaced clips, centre crop,
   the weights' own preprocessing), at most `MAX_CLIPS_PER_VIDEO` a video, the videos in a seeded order.
   Unreadable videos are passed over and counted; fewer clips than asked for is an error.
2. The last `holdout` share of them (the last videos in that order) is held out; NNCF's post-training
   quantization (`nncf.quantize`) calibrates the OpenVINO model converted from the PyTorch one
   (`inference.openvino.OpenVinoC3D.from_c3d`, outputs logits, pool5, fc6, fc7) on the rest.
3. On the held-out clips the int8 model is compared with PyTorch fp32 (`Accuracy`): top-1 agreement of the logits,
   the cosine of every clip's fc6 and fc7 rows, the max relative error of each output.
4. Below `min_agreement` nothing is written and `QuantizeError` gives the figures. Otherwise the IR, with
   `c3dnet.json` (config, preprocessing, class names, the weights' SHA-256, the calibration and the figures),
   is written to a staging folder beside `out` and renamed into place, as `c3d export` publishes.

With `int8=False` (`c3d quantize --float`) the model is converted and not quantized: every clip is compared, and
the folder holds the float IR, which runs in fp32 or, with `--precision bf16`, in OpenVINO's bf16.

Example:
    >>> report = quantize(load_model("c3d.safetensors"), ["videos/"], "c3d_int8", clips=128)   # doctest: +SKIP
    >>> report.accuracy.top1_agreement, report.accuracy.fc6_cosine_min                        # doctest: +SKIP
    (1.0, 0.996)
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from c3dnet.data.sources import VideoRecord, find_videos
from c3dnet.data.transforms import normalize
from c3dnet.errors import C3DError, ConfigError, DataError
from c3dnet.export import OUTPUT_NAMES, OutputsGraph, staging_dir
from c3dnet.inference.openvino import META_FILE, OpenVinoC3D, require, sha256_file, signal_stack_kept
from c3dnet.log import get_logger
from c3dnet.model import C3D
from c3dnet.version import __version__

log = get_logger(__name__)

MAX_CLIPS_PER_VIDEO = 10
"""Most calibration clips cut from one video: the reference test's 10 evenly spaced clips."""
BATCH = 8


class QuantizeError(C3DError):
    """A quantized model that failed its accuracy check against fp32; nothing was written."""


@dataclass(frozen=True)
class Accuracy:
    """int8 against fp32 on the same clips.

    Attributes:
        clips: how many clips were compared.
        top1_agreement: the share of clips whose top-1 class is the same.
        fc6_cosine_min, fc6_cosine_mean, fc7_cosine_min, fc7_cosine_mean: cosine of each clip's rows.
        max_rel_error: per output, max |int8 - fp32| / max |fp32|.
    """

    clips: int
    top1_agreement: float
    fc6_cosine_min: float
    fc6_cosine_mean: float
    fc7_cosine_min: float
    fc7_cosine_mean: float
    max_rel_error: dict[str, float]

    def summary(self) -> str:
        errors = ", ".join(f"{k} {v:.2e}" for k, v in self.max_rel_error.items())
        return (f"top-1 agreement {100 * self.top1_agreement:.1f}% of {self.clips} held-out clips, fc6 cosine min "
                f"{self.fc6_cosine_min:.4f} (mean {self.fc6_cosine_mean:.4f}), fc7 cosine min "
                f"{self.fc7_cosine_min:.4f} (mean {self.fc7_cosine_mean:.4f}), max relative error {errors}")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (N, D) arrays; 1 where both rows are zero, 0 where only one is."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both = (na == 0) & (nb == 0)
    out = (a * b).sum(axis=1) / np.maximum(na * nb, 1e-300)
    return np.where(both, 1.0, out)


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> Accuracy:
    """`Accuracy` of `got` against `reference`, both output name -> (N, D) rows."""
    fc6, fc7 = cosines(got["fc6"], reference["fc6"]), cosines(got["fc7"], reference["fc7"])
    errors = {}
    for name in OUTPUT_NAMES:
        scale = float(np.abs(reference[name]).max())
        diff = float(np.abs(got[name] - reference[name]).max())
        errors[name] = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    agree = float((got["logits"].argmax(1) == reference["logits"].argmax(1)).mean())
    return Accuracy(len(fc6), agree, float(fc6.min()), float(fc6.mean()), float(fc7.min()), float(fc7.mean()), errors)


@dataclass(frozen=True)
class CalibrationClips:
    """uint8 clips (N, 3, T, crop, crop) for calibration, how many videos gave them, and the videos passed over."""

    clips: torch.Tensor
    videos: int
    unreadable: list[str]


def calibration_clips(records: list[VideoRecord], model: C3D, clips: int, seed: int = 0,
                      autorotate: bool = True) -> CalibrationClips:
    """`clips` test-protocol clips from `records` (see the module docstring).

    Raises:
        DataError: every video unreadable, or fewer clips than `clips` in the readable ones.
    """
    from c3dnet.data.dataset import ClipDataset

    order = np.random.default_rng(seed).permutation(len(records))
    per_video = min(MAX_CLIPS_PER_VIDEO, math.ceil(clips / len(records)))
    dataset = ClipDataset([records[i] for i in order], "test", model.preprocess, num_clips=per_video,
                          autorotate=autorotate)
    got: list[torch.Tensor] = []
    unreadable: list[str] = []
    used = n = 0
    for i in range(len(dataset)):
        if n >= clips:
            break
        try:
            sample = dataset.load(i)[: clips - n]
        except DataError as e:
            unreadable.append(str(e))
            log.warning("calibration: passed over an unreadable video: %s", e)
            continue
        got.append(sample)
        used, n = used + 1, n + len(sample)
    if not got:
        raise DataError(f"none of the {len(records)} calibration videos could be read (first: {unreadable[0]}); "
                        "give readable videos with --calib")
    if n < clips:
        bad = f" ({len(unreadable)} unreadable)" if unreadable else ""
        raise DataError(f"the calibration videos give {n} clips, fewer than --clips {clips}: {used} readable videos"
                        f"{bad} x at most {MAX_CLIPS_PER_VIDEO} clips each; add videos to --calib or lower --clips")
    return CalibrationClips(torch.cat(got), used, unreadable)


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize` measured and wrote (`path` None when nothing was written)."""

    path: Path | None
    accuracy: Accuracy
    calibration_clips: int
    held_out_clips: int
    videos: int
    unreadable_videos: int
    seconds: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path) if self.path else None
        return d


def check_out(out: Path) -> None:
    """`ConfigError` unless `out` is absent, empty, or an earlier `c3d quantize` folder (which is replaced)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file; --out must be a folder for the OpenVINO model")
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise ConfigError(f"{out}: holds files not written by `c3d quantize` (no {META_FILE}); choose another --out "
                          "or empty it")


def reference_outputs(model: C3D, x: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch fp32 outputs of `model` for normalised clips `x`, in batches."""
    graph = OutputsGraph(model.float().cpu().eval())
    parts: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode():
        for start in range(0, len(x), BATCH):
            parts.append(graph(x[start:start + BATCH]))
    return {name: torch.cat([p[k] for p in parts]).numpy() for k, name in enumerate(OUTPUT_NAMES)}


def quantize_openvino(model: C3D, calibration: torch.Tensor) -> OpenVinoC3D:
    """The int8 OpenVINO model: `model` converted, then NNCF's post-training quantization calibrated on the
    normalised clips `calibration` (N, 3, T, H, W)."""
    nncf = require("nncf")
    converted = OpenVinoC3D.from_c3d(model)
    items = [calibration[i:i + 1].numpy() for i in range(len(calibration))]
    with signal_stack_kept():
        quantized = nncf.quantize(converted.model, nncf.Dataset(items), subset_size=len(items))
    return OpenVinoC3D(quantized, converted.config, converted.preprocess, converted.class_names,
                       converted.feature_dims, quantized=True)


def quantize(model: C3D, videos: list[str | os.PathLike[str]], out: str | os.PathLike[str], *, clips: int = 128,
             holdout: float = 0.25, min_agreement: float = 0.99, seed: int = 0, weights: str | None = None,
             autorotate: bool = True, int8: bool = True) -> QuantizeReport:
    """Quantize `model` to int8, calibrated on clips of `videos`, and write the IR folder `out` (see above).

    Args:
        model: the C3D (its preprocessing cuts the clips).
        videos: video files, folders or .txt lists (`find_videos`).
        out: the IR folder (absent, empty, or an earlier one, which is replaced).
        clips: clips sampled in all, calibration and held-out together.
        holdout: the share of them held out for the accuracy check (at least one clip each way).
        min_agreement: the least top-1 agreement with fp32 on the held-out clips for the IR to be written.
        seed: the order of the videos.
        weights: the weights' path or name, recorded with their SHA-256 (when a file).
        autorotate: turn frames as their display matrix says.
        int8: quantize; False: write the float model (no calibration; all `clips` are compared).

    Raises:
        QuantizeError: agreement below `min_agreement` (nothing written). DataError: calibration videos.
        ConfigError: bad options or `out`.
    """
    if clips < 2 or not 0 < holdout < 1 or not 0 <= min_agreement <= 1:
        raise ConfigError(f"--clips must be >= 2, --holdout in (0, 1) and --min-agreement in [0, 1]; got {clips}, "
                          f"{holdout}, {min_agreement}")
    out = Path(out)
    check_out(out)
    start = time.perf_counter()
    require("nncf"), require()  # before any decoding: a missing extra costs nothing
    found = find_videos(list(videos), skip_bad=True)
    sampled = calibration_clips(found.records, model, clips, seed, autorotate)
    held = min(clips - 1, max(1, round(holdout * clips))) if int8 else clips
    x = normalize(sampled.clips, model.preprocess)  # float32 (N, 3, T, H, W)
    if int8:
        log.info("calibrating on %d clips of %d videos, %d held out", clips - held, sampled.videos, held)
    ov_model = quantize_openvino(model, x[: clips - held]) if int8 else OpenVinoC3D.from_c3d(model)
    compiled = ov_model.compile("int8" if int8 else "fp32")
    what = "int8" if int8 else "OpenVINO fp32"
    test = x[clips - held:]
    got = [compiled.run(test[i:i + BATCH], OUTPUT_NAMES) for i in range(0, len(test), BATCH)]
    accuracy = compare(reference_outputs(model, test), {n: np.concatenate([g[k] for g in got])
                                                        for k, n in enumerate(OUTPUT_NAMES)})
    log.info("%s against PyTorch fp32: %s", what, accuracy.summary())
    if accuracy.top1_agreement < min_agreement:
        kept = " (the earlier model there is left as it was)" if out.exists() else ""
        raise QuantizeError(f"{out}: not written{kept}: {what} agrees with fp32 on "
                            f"{100 * accuracy.top1_agreement:.1f}% of the held-out clips' top-1, below --min-agreement "
                            f"{min_agreement:g} ({accuracy.summary()}); calibrate on more or more "
                            "typical videos (--clips, --calib), or lower --min-agreement")
    extra = {"weights": weights, "weights_sha256": _weights_sha(weights), "c3dnet": __version__,
             "nncf": require("nncf").__version__,
             "calibration": {"clips": clips - held, "held_out": held, "videos": sampled.videos,
                             "unreadable_videos": len(sampled.unreadable), "seed": seed,
                             "clips_per_video": min(MAX_CLIPS_PER_VIDEO, math.ceil(clips / len(found.records)))},
             "accuracy": asdict(accuracy)}
    size = write_folder(ov_model, out, extra)
    return QuantizeReport(out, accuracy, clips - held, held, sampled.videos, len(sampled.unreadable),
                          time.perf_counter() - start, size)


def _weights_sha(weights: str | None) -> str | None:
    if weights is None:
        return None
    from c3dnet.weights.download import resolve

    path, _ = resolve(weights, progress=False)
    return sha256_file(path) if path.is_file() else None


def write_folder(model: OpenVinoC3D, out: Path, extra: dict[str, Any]) -> int:
    """Write `model` into a staging folder beside `out`, make it durable and rename it into place (an earlier
    folder there is moved aside first and removed after); returns the bytes written."""
    with staging_dir(out) as staging:
        folder = staging / "ir"
        folder.mkdir()  # the umask's permissions (mkdtemp's own folder is 0700)
        model.save(folder, extra)
        for f in folder.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        size = sum(f.stat().st_size for f in folder.iterdir())
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(folder, out)
        fd = os.open(out.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return size
