"""Display orientation: the rotation and flips a video's display matrix asks for, applied as FFmpeg does.

A phone stores its video in the sensor's orientation and a display matrix that says how to turn it. The FFmpeg
command-line tool turns frames by default (`-autorotate`, on unless `-noautorotate`): it reads the rotation with
`av_display_rotation_get`, and for right angles inserts `transpose` (90, 270 degrees) or `hflip`/`vflip` filters.
`orientation_of(matrix)` reproduces that choice, and `orient(frame, ops)` applies it losslessly with numpy.

Example:
    >>> import numpy as np
    >>> m = (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30)     # what `-metadata:s:v rotate=90` writes into an MP4
    >>> o = orientation_of(m)
    >>> o.rotation, o.ops
    (270, ('transpose=cclock',))
    >>> orient(np.zeros((180, 320, 3), np.uint8), o.ops).shape
    (320, 180, 3)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from c3dnet.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class Orientation:
    """What the display matrix asks for.

    Attributes:
        rotation: clockwise rotation in degrees, as FFmpeg's `get_rotation` gives it, in [0, 360).
        ops: the FFmpeg filters that turn coded frames into displayed ones, in order (empty: none), e.g.
            ("transpose=clock",) or ("hflip", "vflip"). Rotations other than right angles are not applied.
    """

    rotation: int = 0
    ops: tuple[str, ...] = ()

    @property
    def swaps_axes(self) -> bool:
        return any(op.startswith("transpose") for op in self.ops)

    def describe(self) -> str:
        """'none', or the filters, e.g. 'transpose=clock' (what the extraction manifest records)."""
        return ",".join(self.ops) or "none"


NONE = Orientation()


def _c_round(x: float) -> float:
    return math.copysign(math.floor(abs(x) + 0.5), x)  # C's round(): halves away from zero


def orientation_of(matrix: tuple[int, ...] | bytes | None) -> Orientation:
    """The orientation FFmpeg's CLI applies for a display matrix (9 int32, or their 36 native-endian bytes)."""
    if matrix is None:
        return NONE
    if isinstance(matrix, (bytes, bytearray, memoryview)):
        if len(matrix) != 36:
            return NONE
        matrix = struct.unpack("=9i", bytes(matrix))
    m = [float(v) for v in matrix]
    scale0, scale1 = math.hypot(m[0] / 65536, m[3] / 65536), math.hypot(m[1] / 65536, m[4] / 65536)
    if scale0 == 0.0 or scale1 == 0.0:
        return NONE  # av_display_rotation_get gives NaN: FFmpeg applies nothing
    ccw = -math.degrees(math.atan2(m[1] / 65536 / scale1, m[0] / 65536 / scale0))  # av_display_rotation_get
    theta = -_c_round(ccw)
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)  # fftools' get_rotation
    if abs(theta - 90) < 1.0:
        ops: tuple[str, ...] = ("transpose=cclock_flip",) if m[3] > 0 else ("transpose=clock",)
    elif abs(theta - 180) < 1.0:
        ops = (("hflip",) if m[0] < 0 else ()) + (("vflip",) if m[4] < 0 else ())
    elif abs(theta - 270) < 1.0:
        ops = ("transpose=clock_flip",) if m[3] < 0 else ("transpose=cclock",)
    elif abs(theta) < 1.0:
        ops = ("vflip",) if m[4] < 0 else ()
    else:  # FFmpeg's `rotate` filter (an arbitrary angle, filled corners): not reproduced
        log.warning("a display matrix asks for a %.0f degree rotation: frames are returned unturned (c3dnet turns "
                    "by right angles only); re-encode the video upright to use it as it is shown", theta)
        ops = ()
    return Orientation(int(round(theta)) % 360, ops)


def orient(frame: np.ndarray, ops: tuple[str, ...]) -> np.ndarray:
    """An (H, W, C) frame turned by FFmpeg's filters `ops` (see `Orientation.ops`), as a contiguous array."""
    if not ops:
        return frame
    a = frame
    for op in ops:
        # FFmpeg's transpose: bit 0 of its direction flips the input vertically, bit 1 the output.
        if op == "transpose=cclock_flip":
            a = a.transpose(1, 0, 2)
        elif op == "transpose=clock":
            a = a[::-1].transpose(1, 0, 2)
        elif op == "transpose=cclock":
            a = a.transpose(1, 0, 2)[::-1]
        elif op == "transpose=clock_flip":
            a = a[::-1].transpose(1, 0, 2)[::-1]
        elif op == "hflip":
            a = a[:, ::-1]
        elif op == "vflip":
            a = a[::-1]
        else:
            raise ValueError(f"unknown orientation filter {op!r}")
    return np.ascontiguousarray(a)
