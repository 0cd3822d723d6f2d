"""Errors that c3dnet reports to users: each names the file (and line) at fault and what to do."""

from __future__ import annotations

import re


class C3DError(Exception):
    """Base class: the CLI prints these as one clear message instead of a traceback."""


class WeightsError(C3DError):
    """A weight file that cannot be read, is unsafe, or does not fit the model."""


class DataError(C3DError):
    """A dataset, annotation file, video or frame folder that cannot be used as given."""


class ConfigError(C3DError):
    """A config file or override that is malformed or names an unknown field."""


class OnnxFileError(WeightsError):
    """An ONNX model from `c3d export` given where a weight file belongs (it runs through `--onnx`)."""


class TrainingStateError(WeightsError):
    """A training state (`last.state.pt`) given as weights: it lacks the metadata of the `.safetensors` files."""


# C0 and C1 control characters, DEL, lone surrogates, and the Unicode line and paragraph separators.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def printable(text: object) -> str:
    """`text` with control characters escaped (`\\x1b`), so a name from a file cannot drive the terminal.

    Class names and keys come from downloaded files; printed raw, an escape sequence in one could rewrite
    the screen, set the window title or hide the lines around it.
    """
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"),
                            str(text))
