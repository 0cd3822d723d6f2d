"""What a forked child process (a DataLoader worker, a decoder process) must not do with what it inherited.

A child made by `fork` has a copy of the parent's objects but only the thread that forked. Python's cyclic
garbage collector, run in the child, would free the parent's unreachable cycles there and call their
destructors: an ONNX Runtime session's destructor joins its thread pool, whose threads exist only in the parent,
and the child waits forever (a decoder process hung this way after `c3d extract --onnx` ran in the same
process). So every object a child inherits is frozen out of the collector as the child starts
(`gc.freeze`, as the `gc` documentation advises for forking servers): the parent frees its own garbage, a child
only what it made. This also keeps the collector from writing to the shared pages.

The OpenCV thread pool has its own hook in `c3dnet.data.resize`.
"""

from __future__ import annotations

import gc
import os

os.register_at_fork(after_in_child=gc.freeze)
