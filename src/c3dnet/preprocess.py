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

from dataclasses import asdict, dataclass, fields
from typing import Any

from c3dnet.data.resize import rescale_size

CHANNEL_ORDERS = ("RGB", "BGR")


@dataclass(frozen=True)
class Preprocess:
    """How raw uint8 RGB frames become the model's input.

    Frames are decoded as RGB uint8, resized so the short side is `short_side` (or to exactly
    `resize_hw` when given, as Caffe's C3D did with 128x171), cropped to `crop_size`, reordered to
    `channel_order`, then `(x - mean) / std` per input channel, in input-channel order.

    Attributes:
        mean: per input channel, in the order given by `channel_order`, on the 0..255 scale.
        std: per input channel, on the 0..255 scale.
        channel_order: "RGB" or "BGR": the channel order the network's first conv expects.
        short_side: resize target for the short side (aspect ratio kept); ignored when `resize_hw` is set.
        resize_hw: optional fixed (height, width) resize, e.g. (128, 171) for Caffe conversions.
        crop_size: square spatial crop fed to the network.
        clip_len: frames per clip.
        frame_interval: step between sampled frames within a clip.
    """

    mean: tuple[float, float, float] = (104.0, 117.0, 128.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    short_side: int = 128
    resize_hw: tuple[int, int] | None = None
    crop_size: int = 112
    clip_len: int = 16
    frame_interval: int = 1

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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["resize_hw"] = list(self.resize_hw) if self.resize_hw is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown preprocessing fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

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
