"""Where this process stands in a torchrun run: `DistInfo.from_env()`, the one reader of torchrun's variables.

A leaf (it imports nothing of c3dnet), so logging, device set-up, weight downloads and the commands read the
same record without pulling in `torch.distributed`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    """This process's rank among `world_size`, and among the `local_world_size` processes of its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> DistInfo:
        """torchrun's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; 0 of 1 without them (or when they are not
        numbers: a process started by hand with a stray variable is a single process)."""
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            if world_size <= 1:
                return cls()
            return cls(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")),
                       int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        except ValueError:
            return cls()

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0
