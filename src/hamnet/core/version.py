"""The installed hamnet version, in one place (``hamnet.__version__`` re-exports it)."""

__version__ = "0.1.0"
