"""edvit: the contracts every part of the system shares (configs, bundle, wire, preprocessing)."""

__version__ = "0.1.0"
