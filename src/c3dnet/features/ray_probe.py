"""The task `c3d extract --ray` runs on every node before any work: can that node see the output folder?

Standard library only, and shipped by value (`cloudpickle.register_pickle_by_value`): a node answers without
importing c3dnet (and PyTorch), in the time a Ray worker takes to start.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def probe_storage(out_dir: str, token_name: str, token: str, paths: list[str]) -> dict[str, str]:
    """On one node: whether it sees the output folder as the driver wrote it (the token file) and can write there,
    and whether it sees `paths` (the weights, a video). Returns {"node", "problem"} ("" when all is well)."""
    node = socket.gethostname()
    folder = Path(out_dir)
    problem = ""
    try:
        seen = (folder / token_name).read_text(encoding="utf-8")
        if seen != token:
            problem = f"{folder / token_name} holds another run's token: the folder there is not the driver's"
        else:
            mine = folder / f"{token_name}.{node}.{os.getpid()}"
            mine.write_text(token, encoding="utf-8")
            mine.unlink()
    except OSError as e:
        problem = f"cannot read and write {folder} ({e.strerror or e})"
    if not problem:
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            problem = f"cannot see {missing[0]}"
    return {"node": node, "problem": problem}
