"""The package version, kept in one place for the build and ``axon --version``."""

__version__ = "0.1.0.dev0"
