"""The package version, in one place (``rcig.__version__``; written into every set and run)."""

__version__ = "0.1.0"
