"""Logging for c3dnet: one configuration, messages from rank 0 only under torchrun."""

from __future__ import annotations

import logging
import sys

from c3dnet.distinfo import DistInfo


class _RankZeroFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        # Warnings and errors from any rank matter; progress chatter only from rank 0.
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(level: int = logging.INFO, rank: int | None = None) -> logging.Logger:
    """Configure the "c3dnet" logger to print to stderr; under torchrun, INFO only from rank 0."""
    info = DistInfo.from_env()
    if rank is None:
        rank = info.rank
    logger = logging.getLogger("c3dnet")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank {rank}] " if info.is_distributed else ""
    handler.setFormatter(logging.Formatter(f"{prefix}%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_RankZeroFilter(rank))
    logger.addHandler(handler)
    logger.propagate = False
    return logger


def get_logger(name: str = "c3dnet") -> logging.Logger:
    return logging.getLogger(name if name.startswith("c3dnet") else f"c3dnet.{name}")


class LineProgress:
    """A progress bar's interface for output that is not a terminal (a log file, CI): plain lines, one every
    `interval` seconds and one at the end, instead of carriage-return redraws."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", initial: int = 0,
                 interval: float = 30.0, stream=None) -> None:
        import time

        self.total, self.desc, self.unit, self.n, self.interval = total, desc, unit, initial, interval
        self.stream = stream if stream is not None else sys.stderr
        self.postfix = ""
        self._clock = time.monotonic
        self._start = self._last = self._clock()
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self._last >= self.interval:
            self._line()

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix(self, **values: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._line()

    def _line(self) -> None:
        self._last = self._clock()
        of = f"/{self.total}" if self.total is not None else ""
        tail = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc or 'progress'}: {self.n}{of} {self.unit} in {self._last - self._start:.0f} s{tail}",
              file=self.stream, flush=True)


def quiet() -> bool:
    """Whether c3dnet's logging was set to warnings and errors only (`-q`): progress is chatter too."""
    level = logging.getLogger("c3dnet").level  # NOTSET (0) in a program that never called setup_logging
    return level > logging.INFO


def progress_bar(total: int | None, desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True):
    """A tqdm bar on a terminal, `LineProgress` lines elsewhere, nothing when not `enabled`, under `-q` (`quiet`)
    or on a rank other than 0."""
    from tqdm import tqdm

    if not enabled or quiet() or not DistInfo.from_env().is_main:
        return tqdm(total=total, disable=True)
    if not sys.stderr.isatty():
        return LineProgress(total, desc, unit, initial)
    return tqdm(total=total, initial=initial, desc=desc or None, unit=unit, dynamic_ncols=True)
