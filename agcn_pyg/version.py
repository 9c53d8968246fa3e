"""The package version, in one place (``setup.cfg`` reads it; ``save_pretrained`` records it)."""

__version__ = "0.1.0"
