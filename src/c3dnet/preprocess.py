"""The preprocessing that a set of weights expects, carried with the weights.

Training, testing, feature extraction and ONNX export all read one `Preprocess` record from the weights'
metadata, so they can never disagree about channel order, mean, resize or crop.

Example:
    >>> from c3dnet.preprocess import Preprocess
    >>> p = Preprocess()              # the seed's: RGB, mean (104, 117, 128), std 1, short side 128, crop 112
    >>> p.to_dict()["mean"]
    [104.0, 117.0, 128.0]
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from c3dnet.data.resize import rescale_size

CHANNEL_ORDERS = ("RGB", "BGR")
VOLUME_MEAN_TENSOR = "preprocess.volume_mean"
"""The tensor of a native weight file that holds its volume mean."""


class VolumeMean:
    """A per-pixel, per-frame mean (Caffe C3D's `sport1m_train16_128_mean.binaryproto`), subtracted from the
    clip after the fixed resize and before the crop, as the original C3D feature extractor did.

    Subtracting the mean and then cropping equals cropping and then subtracting the mean's window at the same
    place, so `normalize` subtracts the centre window (where every test, predict and extract clip is cropped).
    Training crops (and flips) at random places and still gets the centre window: `normalize` runs on whole
    uint8 batches on the device, after the workers' crops, and is not told where each clip came from. How much
    that differs from Caffe's training depends on how flat the mean is; it was not measured (no real mean file).

    Attributes:
        values: float32 (3, T, H, W), channels in the network's order, read-only.
        source: the file it came from (its name only).
        sha256: digest of `values`' bytes: what the metadata records and equality compares.
    """

    def __init__(self, values: np.ndarray, source: str) -> None:
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.ndim != 4 or values.shape[0] != 3 or not np.isfinite(values).all():
            raise ValueError(f"a volume mean must be finite float values of shape (3, T, H, W), got {values.shape}")
        values.flags.writeable = False
        self.values, self.source = values, source
        self.sha256 = hashlib.sha256(values.tobytes()).hexdigest()
        self._windows: dict[tuple, Any] = {}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.values.shape)  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "sha256": self.sha256, "source": self.source,
                "tensor": VOLUME_MEAN_TENSOR}

    def window(self, top: int, left: int, height: int, width: int, frames: int, device: Any = None) -> Any:
        """The mean under a `height` x `width` crop at (`top`, `left`) of `frames` frames: a (3, T, h, w) tensor."""
        import torch

        t, h, w = self.shape[1:]
        if frames != t or top < 0 or left < 0 or top + height > h or left + width > w:
            raise ValueError(f"clips of {frames} frames cropped {height}x{width} at ({top}, {left}) do not fit the "
                             f"volume mean of {t} frames of {h}x{w} ({self.source})")
        key = (top, left, height, width, str(device))
        if key not in self._windows:
            crop = np.ascontiguousarray(self.values[:, :, top:top + height, left:left + width])
            self._windows[key] = torch.from_numpy(crop).to(device)
        return self._windows[key]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VolumeMean) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __repr__(self) -> str:
        return f"VolumeMean({self.source!r}, shape={self.shape}, sha256={self.sha256[:12]}...)"


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 RGB frames become the model's input.

    Frames are decoded as RGB uint8, resized so the short side is `short_side` (or to exactly
    `resize_hw` when given, as Caffe's C3D did with 128x171), cropped to `crop_size`, reordered to
    `channel_order`, then `(x - mean) / std` per input channel, in input-channel order. With a `volume_mean`
    (Caffe's per-pixel mean), that is subtracted instead of `mean` (see `VolumeMean`).

    Attributes:
        mean: per input channel, in the order given by `channel_order`, on the 0..255 scale.
        std: per input channel, on the 0..255 scale.
        channel_order: "RGB" or "BGR": the channel order the network's first conv expects.
        short_side: resize target for the short side (aspect ratio kept); ignored when `resize_hw` is set.
        resize_hw: optional fixed (height, width) resize, e.g. (128, 171) for Caffe conversions.
        crop_size: square spatial crop fed to the network.
        clip_len: frames per clip.
        frame_interval: step between sampled frames within a clip.
        volume_mean: Caffe's per-pixel, per-frame mean, or None (the per-channel `mean` is used). Stored in a
            native file as the tensor `preprocess.volume_mean`; `to_dict` describes it (shape, digest, source).
    """

    mean: tuple[float, float, float] = (104.0, 117.0, 128.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    short_side: int = 128
    resize_hw: tuple[int, int] | None = None
    crop_size: int = 112
    clip_len: int = 16
    frame_interval: int = 1
    volume_mean: VolumeMean | None = None

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got mean={self.mean} std={self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")
        for name in ("short_side", "crop_size", "clip_len", "frame_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # Normalise sequences to tuples of floats so records compare equal after a JSON round trip.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.resize_hw is not None:
            object.__setattr__(self, "resize_hw", tuple(int(v) for v in self.resize_hw))
        if self.volume_mean is not None:
            if not isinstance(self.volume_mean, VolumeMean):
                raise ValueError(f"volume_mean must be a VolumeMean, got {type(self.volume_mean).__name__}")
            _, t, h, w = self.volume_mean.shape
            if self.channel_order != "BGR" or self.resize_hw != (h, w) or self.clip_len != t:
                raise ValueError(f"a volume mean of {t} frames of {h}x{w} implies Caffe's BGR channels, a fixed "
                                 f"{h}x{w} resize and {t}-frame clips (got {self.channel_order}, resize_hw "
                                 f"{self.resize_hw}, clip_len {self.clip_len})")
            if self.crop_size > min(h, w):
                raise ValueError(f"crop {self.crop_size} is larger than the volume mean's {h}x{w} frames")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(dataclasses.replace(self, volume_mean=None))
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["resize_hw"] = list(self.resize_hw) if self.resize_hw is not None else None
        del d["volume_mean"]  # records without one stay as they always were
        if self.volume_mean is not None:
            d["volume_mean"] = self.volume_mean.describe()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], volume_mean: VolumeMean | None = None) -> Preprocess:
        """The record `to_dict` wrote. A volume mean's values are not in the dict (only its description): pass
        them as `volume_mean`, whose digest must match the description."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        described = d.pop("volume_mean", None)
        if described is not None:
            if volume_mean is None:
                raise ValueError(f"the preprocessing has a volume mean ({described.get('source')}) whose values are "
                                 f"stored in the native weight file (tensor {VOLUME_MEAN_TENSOR}); load the weights "
                                 f"with c3dnet.weights.read_weights")
            if described.get("sha256") != volume_mean.sha256 or list(described.get("shape", [])) != \
                    list(volume_mean.shape):
                raise ValueError(f"the volume mean's values (sha256 {volume_mean.sha256}, shape {volume_mean.shape}) "
                                 f"are not the ones the metadata describes ({described})")
        elif volume_mean is not None:
            raise ValueError("a volume mean was given for a preprocessing record that has none")
        return cls(**d, volume_mean=volume_mean)

    def resize_target(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing a `height` x `width` frame: 240x320 -> 128x171."""
        if self.resize_hw is not None:
            return self.resize_hw
        return rescale_size(height, width, self.short_side)


SEED_PREPROCESS = Preprocess()
"""The seed's (and mmaction2's C3D) preprocessing: RGB frames minus (104, 117, 128), std 1, 128 short side."""

CAFFE_PREPROCESS = Preprocess(
    mean=(90.25, 97.66, 101.41), channel_order="BGR", resize_hw=(128, 171)
)
"""Caffe C3D's Sports-1M preprocessing: BGR, its per-channel mean (B, G, R), frames resized to 128x171."""
