"""The reference's resize: OpenCV `INTER_LINEAR` (mmcv's 'bilinear', Caffe C3D's data layer), no antialiasing.

The seed decodes frames with `cv2.imdecode` and resizes them with
`cv2.resize(img, (171, 128), interpolation=cv2.INTER_LINEAR)`; the Sports-1M weights were trained on frames resized
the same way. Every resize in c3dnet (decoded videos, frame folders, `c3d prepare --short-side`, clip tensors) goes
through `resize_image`, so every path gives the same pixels.

Example:
    >>> import numpy as np
    >>> frame = np.zeros((240, 320, 3), dtype=np.uint8)
    >>> rescale_size(240, 320, 128)                       # mmcv's rounding: int(320 * 128 / 240 + 0.5)
    (128, 171)
    >>> resize_image(frame, (128, 171)).shape
    (128, 171, 3)
"""

from __future__ import annotations

import sys

import numpy as np


def one_opencv_thread() -> None:
    """OpenCV on the calling thread only.

    OpenCV's thread pool does not survive `fork`: a DataLoader worker forked while the pool's threads exist can
    hang in its first `cv2.resize`, or in `cv2.setNumThreads`. One thread costs nothing here (frames are small,
    and loader processes already use every core), so c3dnet never starts the pool, and stops it before each fork
    it makes (`c3dnet.forks`) if other code started it.
    """
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def opencv():  # -> the cv2 module
    """The cv2 module, set to run on the calling thread only (see `one_opencv_thread`)."""
    import cv2

    one_opencv_thread()
    return cv2


def rescale_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to `short_side`, rounded as mmcv's `rescale_size` does."""
    scale = short_side / min(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """One (H, W, C) image resized to `size_hw` = (height, width) by `cv2.resize(..., INTER_LINEAR)`.

    Returns the input itself when it already has that size.
    """
    cv2 = opencv()
    h, w = int(size_hw[0]), int(size_hw[1])
    if image.shape[:2] == (h, w):
        return image
    if h < 1 or w < 1:
        raise ValueError(f"cannot resize to {h}x{w}")
    out = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
    return out if out.ndim == image.ndim else out[..., None]  # OpenCV drops a single channel axis


def resize_frames(frames: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(T, H, W, C) frames resized to `size_hw` one by one (see `resize_image`); the input itself at that size."""
    if frames.shape[1:3] == tuple(size_hw):
        return frames
    return np.stack([resize_image(f, size_hw) for f in frames])
