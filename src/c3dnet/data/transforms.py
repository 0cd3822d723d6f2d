"""Clip transforms: pure functions on uint8 tensors (C, T, H, W), train/eval presets, and normalisation.

Frames stay uint8 through resizing, cropping and flipping, so DataLoader workers move 4x fewer bytes;
`normalize` runs last, on the device, on whole batches.

Example:
    >>> import numpy as np, torch
    >>> from c3dnet.preprocess import SEED_PREPROCESS
    >>> frames = np.zeros((16, 240, 320, 3), dtype=np.uint8)              # (T, H, W, 3) from the decoder
    >>> clip = eval_transform(frames, SEED_PREPROCESS)                    # resize 128x171, centre crop 112
    >>> tuple(clip.shape), clip.dtype
    ((3, 16, 112, 112), torch.uint8)
    >>> normalize(clip[None], SEED_PREPROCESS)[0, :, 0, 0, 0].tolist()  # (0 - mean) / std per channel
    [-104.0, -117.0, -128.0]
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from c3dnet.data.resize import resize_frames
from c3dnet.preprocess import Preprocess


def _check_cthw(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a clip tensor (C, T, H, W), got shape {tuple(x.shape)}")


def resize(x: torch.Tensor, size_hw: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Bilinear resize of every frame to `size_hw` = (height, width); the input itself at that size.

    uint8 frames go through OpenCV `INTER_LINEAR`, the reference's resize (`c3dnet.data.resize`), so a tensor
    resized here equals a frame resized while decoding. Float frames use `F.interpolate` with the same
    half-pixel bilinear rule. `antialias=True` (not the reference's) low-pass filters when shrinking, through
    `F.interpolate(antialias=True)`.
    """
    _check_cthw(x)
    h, w = int(size_hw[0]), int(size_hw[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    if x.dtype == torch.uint8 and not antialias:
        frames = x.permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, C)
        out = torch.from_numpy(resize_frames(frames, (h, w)))  # (T, h, w, C)
        return out.permute(3, 0, 1, 2).contiguous().to(x.device)  # (C, T, h, w)
    frames = x.permute(1, 0, 2, 3).float()  # (T, C, H, W): frames as the batch
    out = F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)
    if x.dtype == torch.uint8:
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    else:
        out = out.to(x.dtype)
    return out.permute(1, 0, 2, 3).contiguous()  # (C, T, h, w)


def _crop(x: torch.Tensor, size: int, top: int, left: int) -> torch.Tensor:
    return x[..., top : top + size, left : left + size]


def _check_crop(x: torch.Tensor, size: int) -> None:
    _check_cthw(x)
    if x.shape[-2] < size or x.shape[-1] < size:
        raise ValueError(f"cannot crop {size}x{size} from frames of {x.shape[-2]}x{x.shape[-1]}; "
                         "resize to at least the crop size first")


def random_crop(x: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    """A `size` x `size` crop at a uniformly random position, the same for every frame."""
    _check_crop(x, size)
    top = int(rng.integers(x.shape[-2] - size + 1))
    left = int(rng.integers(x.shape[-1] - size + 1))
    return _crop(x, size, top, left)


def center_offsets(height: int, width: int, size: int) -> tuple[int, int]:
    """(top, left) of the centre `size` x `size` crop of a `height` x `width` frame: offsets rounded down, as
    mmaction2's CenterCrop (every centre crop in c3dnet uses this)."""
    return (height - size) // 2, (width - size) // 2


FIVE_CROP = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
"""The five crops, in the order of torchvision's `five_crop`."""


def five_crop_offsets(height: int, width: int, size: int) -> dict[str, tuple[int, int]]:
    """(top, left) of each `size` x `size` crop of torchvision's `five_crop` of a `height` x `width` frame, by name.

    The corners as torchvision places them: (0, 0), (0, W - c), (H - c, 0), (H - c, W - c). The centre by
    `center_offsets` (rounded down), as every centre crop in c3dnet; torchvision's `center_crop` rounds half to
    even instead, one pixel further right or down where W - c or H - c is odd (128x171 with 112: column 30, not 29).

    Example:
        >>> list(five_crop_offsets(128, 171, 112).values())   # top-left, top-right, bottom-left, bottom-right, centre
        [(0, 0), (0, 59), (16, 0), (16, 59), (8, 29)]
    """
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from frames of {height}x{width}; frames must be at least "
                         f"{size}x{size}")
    bottom, right = height - size, width - size
    return {"top_left": (0, 0), "top_right": (0, right), "bottom_left": (bottom, 0), "bottom_right": (bottom, right),
            "center": center_offsets(height, width, size)}


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre `size` x `size` crop (see `center_offsets`)."""
    _check_crop(x, size)
    return _crop(x, size, *center_offsets(x.shape[-2], x.shape[-1], size))


def hflip(x: torch.Tensor) -> torch.Tensor:
    """Mirror every frame left to right."""
    return x.flip(-1)


def normalize(x: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """float32 `(x - mean) / std` per channel after reordering RGB input to `preprocess.channel_order`.

    Args:
        x: uint8 or float clips (..., 3, T, H, W) in RGB order, on any device, batched or not.
        preprocess: gives channel order, mean and std (per network input channel, 0..255 scale).
    """
    if x.ndim < 4 or x.shape[-4] != 3:
        raise ValueError(f"normalize expects (..., 3, T, H, W) RGB clips, got shape {tuple(x.shape)}")
    x = x.float()
    if preprocess.channel_order == "BGR":
        x = x.flip(-4)
    if preprocess.volume_mean is not None:  # Caffe's per-pixel mean: its window under the centre crop
        t, h, w = x.shape[-3:]
        top, left = center_offsets(*preprocess.volume_mean.shape[2:], h)
        mean = preprocess.volume_mean.window(top, left, h, w, t, x.device)
    else:
        mean = torch.tensor(preprocess.mean, dtype=torch.float32, device=x.device).view(3, 1, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32, device=x.device).view(3, 1, 1, 1)
    return (x - mean) / std


def _as_thwc(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    a = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected decoded frames (T, H, W, 3), got shape {tuple(a.shape)}")
    return a


def _resized(frames: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """Frames at `preprocess.resize_target`; frames decoded (or extracted) at that size pass through untouched."""
    h, w = frames.shape[1:3]
    return resize_frames(frames, preprocess.resize_target(h, w))


def _crop_to_cthw(frames: np.ndarray, size: int, top: int, left: int, flip: bool) -> torch.Tensor:
    # Crop and flip as numpy views, then one transposing copy: numpy does this strided uint8 copy about 20x
    # faster than torch's permute(...).contiguous() (measured on 16x128x171 clips).
    view = frames[:, top : top + size, left : left + size]  # (T, size, size, 3)
    if flip:
        view = view[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(view.transpose(3, 0, 1, 2)))  # (3, T, size, size)


def _check_size(frames: np.ndarray, size: int) -> None:
    if frames.shape[1] < size or frames.shape[2] < size:
        raise ValueError(f"cannot crop {size}x{size} from frames of {frames.shape[1]}x{frames.shape[2]}; "
                         "resize to at least the crop size first")


def train_transform(
    frames: np.ndarray | torch.Tensor, preprocess: Preprocess, rng: np.random.Generator
) -> torch.Tensor:
    """Training preset: (T, H, W, 3) uint8 -> resize, random crop, flip with p=0.5 -> uint8 (3, T, crop, crop).

    Draws from `rng` in the order of `random_crop` (top, left) and then the flip, so it equals
    `hflip?(random_crop(resize(x)))` on the same generator.
    """
    a = _resized(_as_thwc(frames), preprocess)
    size = preprocess.crop_size
    _check_size(a, size)
    top = int(rng.integers(a.shape[1] - size + 1))
    left = int(rng.integers(a.shape[2] - size + 1))
    return _crop_to_cthw(a, size, top, left, flip=bool(rng.random() < 0.5))


def eval_transform(frames: np.ndarray | torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Validation/test preset: (T, H, W, 3) uint8 -> resize, centre crop -> uint8 (3, T, crop, crop)."""
    a = _resized(_as_thwc(frames), preprocess)
    size = preprocess.crop_size
    _check_size(a, size)
    return _crop_to_cthw(a, size, *center_offsets(a.shape[1], a.shape[2], size), flip=False)
