"""Distributed runs under torchrun: process-group set-up from the environment, gathers and reductions, and what
a lost process means.

The same code runs single-process (world size 1) when torchrun's variables are absent. On several nodes each
node runs torchrun with the same `--nnodes`, `--nproc_per_node`, rendezvous address and command; when a process
or a node dies, the collectives of the others fail (gloo: "Connection reset by peer", NCCL: a watchdog error or a
timeout), and `is_peer_loss` tells such an error from the others.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
import torch.distributed as dist

from c3dnet.distinfo import DistInfo
from c3dnet.errors import C3DError

__all__ = ["DistInfo", "PeerLostError", "init_distributed"]


class PeerLostError(C3DError):
    """Another process of a distributed run died or became unreachable: every process stops."""


def init_distributed(device_name: str | None = "auto") -> DistInfo:
    """Join torchrun's process group (nccl for CUDA, gloo for the CPU); world size 1 without torchrun."""
    info = DistInfo.from_env()
    if not info.is_distributed:
        return info
    if not dist.is_initialized():
        name = (device_name or "auto").lower()
        use_cuda = torch.cuda.is_available() and (name == "auto" or name.startswith("cuda"))
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        backend = "nccl" if use_cuda else "gloo"
        store = attempt_store(info)
        if store is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, store=store, rank=info.rank, world_size=info.world_size)
    return info


def attempt_store(info: DistInfo, timeout_s: float = 300.0) -> dist.Store | None:
    """torchrun's store for this attempt only, or None outside torchrun's agent store.

    torchrun (2.13) restarts a run's processes (`--max-restarts`) with the same store and the same keys, so the
    restarted processes may read the addresses their dead predecessors published and fail to connect ("Gloo
    connectFullMesh failed ... Connection refused", about one restart in two here). A prefix per attempt keeps each
    attempt's keys its own.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    from datetime import timedelta

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), info.world_size,
                          is_master=False, timeout=timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"c3dnet/attempt_{restart_count()}", store)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable, small), in rank order; `[obj]` when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """`values` summed over every rank (in place; the tensor itself when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def restart_count() -> int:
    """How often torchrun has restarted this run's processes (`--max-restarts`); 0 on the first attempt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


_LOST = re.compile(r"connection (reset|closed|refused)|broken pipe|closed by peer|nccl error|communicator was aborted",
                   re.IGNORECASE)


def is_peer_loss(error: BaseException) -> bool:
    """Whether `error`, raised by a collective, means another process is gone: torch's `DistError` family
    (backend, network and store errors) or a backend's `RuntimeError` about a dropped connection."""
    if isinstance(error, dist.DistError):
        return True
    return isinstance(error, RuntimeError) and bool(_LOST.search(str(error)))


def peer_loss_reason(error: BaseException) -> str:
    """The backend's first sentence, on one line: without its C++ source location, its advice or its traceback
    (gloo: "Connection closed by peer [127.0.0.1]:5010")."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return re.split(r"\.\s", text, maxsplit=1)[0][:200]
