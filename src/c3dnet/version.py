"""The package version (a leaf module: importing it imports nothing else of c3dnet)."""

__version__ = "0.1.0"
