"""Errors that c3dnet reports to users: each names the file (and line) at fault and what to do."""

from __future__ import annotations


class C3DError(Exception):
    """Base class: the CLI prints these as one clear message instead of a traceback."""


class WeightsError(C3DError):
    """A weight file that cannot be read, is unsafe, or does not fit the model."""


class DataError(C3DError):
    """A dataset, annotation file, video or frame folder that cannot be used as given."""


class ConfigError(C3DError):
    """A config file or override that is malformed or names an unknown field."""
