"""Logging for c3dnet: one configuration, messages from rank 0 only under torchrun."""

from __future__ import annotations

import logging
import os
import sys


class _RankZeroFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        # Warnings and errors from any rank matter; progress chatter only from rank 0.
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(level: int = logging.INFO, rank: int | None = None) -> logging.Logger:
    """Configure the "c3dnet" logger to print to stderr; under torchrun, INFO only from rank 0."""
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    logger = logging.getLogger("c3dnet")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank {rank}] " if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 else ""
    handler.setFormatter(logging.Formatter(f"{prefix}%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_RankZeroFilter(rank))
    logger.addHandler(handler)
    logger.propagate = False
    return logger


def get_logger(name: str = "c3dnet") -> logging.Logger:
    return logging.getLogger(name if name.startswith("c3dnet") else f"c3dnet.{name}")
