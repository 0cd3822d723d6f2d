"""Frame folders: `img_00001.jpg`, `img_00002.jpg`, ... as the seed and `c3d prepare` write them.

JPEG frames are decoded as the seed decodes them, by `cv2.imdecode` then BGR -> RGB, and resized by
`c3dnet.data.resize` (OpenCV `INTER_LINEAR`). PIL (which bundles the same libjpeg-turbo, and gives the same pixels)
takes any file OpenCV does not take cleanly: other image formats, and broken files, for which it gives the errors.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from c3dnet.data.records import MemoryLRU, VideoInfo, file_key
from c3dnet.data.resize import opencv, resize_image
from c3dnet.errors import DataError

FRAME_TEMPLATE = "img_{:05d}.jpg"
"""File name of frame k (counted from FRAME_START) in a frame folder, as the seed and `c3d prepare` write them."""
FRAME_START = 1

folder_cache = MemoryLRU(32 * 2**20)  # a few hundred bytes a folder: about 100,000 folders


def _template_regex(template: str) -> re.Pattern[str]:
    m = re.fullmatch(r"(.*)\{:0?(\d*)d\}(.*)", template)
    if m is None:
        raise ValueError(f"frame template must contain one integer field like 'img_{{:05d}}.jpg', got {template!r}")
    return re.compile(re.escape(m.group(1)) + r"(\d+)" + re.escape(m.group(3)))


def folder_info(path: Path, template: str = FRAME_TEMPLATE, start_index: int = FRAME_START) -> VideoInfo:
    """Frame count and size of a frame folder (cached); `DataError` naming the first missing file."""
    key = (*file_key(path), template, start_index)
    hit = folder_cache.get(key)
    if hit is not None:
        return hit
    pattern = _template_regex(template)
    try:
        numbers = sorted(int(m.group(1)) for name in os.listdir(path) if (m := pattern.fullmatch(name)))
    except OSError as e:
        raise DataError(f"{path}: cannot list the frame folder ({e.strerror or e}); check its permissions") from e
    if not numbers:
        raise DataError(f"{path}: no frames named like {template.format(start_index)!r}; "
                        "extract the frames with `c3d prepare` or check the frame template")
    expected = list(range(start_index, start_index + len(numbers)))
    if numbers != expected:
        gap = next(e for e, n in zip(expected, numbers, strict=False) if e != n)
        raise DataError(f"{path / template.format(gap)}: missing frame file ({len(numbers)} frames found, not "
                        f"numbered {start_index}..{start_index + len(numbers) - 1}); re-extract this video")
    height, width = _image_size(path / template.format(start_index))
    info = VideoInfo(len(numbers), 0.0, height, width)
    folder_cache.put(key, info)
    return info


def _image_size(file: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            return im.height, im.width
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise DataError(f"{file}: cannot read this frame image ({e}); re-extract the video's frames") from e


_JPEG_END = b"\xff\xd9"


def read_jpeg_opencv(file: Path) -> np.ndarray | None:
    """An RGB frame decoded by OpenCV as the seed does, or None (not a complete JPEG, or unreadable) for PIL."""
    cv2 = opencv()
    if file.suffix.lower() not in (".jpg", ".jpeg"):
        return None
    try:
        data = np.fromfile(file, dtype=np.uint8)
    except OSError:
        return None
    if data.size < 4 or data[-2:].tobytes() != _JPEG_END:  # truncated: libjpeg would only warn
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_pil(file: Path, i: int, folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as e:
        raise DataError(f"{file}: missing frame file (frame {i} of {folder}); the annotation's frame count "
                        "may be wrong or the extraction incomplete: re-extract this video") from e
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"{file}: cannot decode this frame image ({e}); re-extract this video") from e


def read_folder(path: Path, indices: np.ndarray, size_hw: tuple[int, int] | None,
                template: str = FRAME_TEMPLATE, start_index: int = FRAME_START) -> np.ndarray:
    """Frames at 0-based `indices` of a frame folder as uint8 (len, H, W, 3) RGB, resized to `size_hw`."""
    if indices.min() < 0:
        raise DataError(f"{path}: negative frame index {int(indices.min())}")
    loaded: dict[int, np.ndarray] = {}
    for i in np.unique(indices).tolist():
        file = path / template.format(i + start_index)
        frame = read_jpeg_opencv(file)
        if frame is None:
            frame = read_image_pil(file, i, path)
        if size_hw is not None:
            frame = resize_image(frame, size_hw)
        loaded[i] = frame
    shapes = {a.shape for a in loaded.values()}
    if len(shapes) > 1:
        raise DataError(f"{path}: frames have different sizes {sorted(shapes)}; re-extract this video")
    return np.stack([loaded[int(i)] for i in indices])
