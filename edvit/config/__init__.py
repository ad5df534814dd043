"""Config models (pydantic, YAML) and their loader."""

from edvit.config.devices import Device, DeviceKind, DevicesFile
from edvit.config.loader import ConfigError, key_path, load_config, parse_config

__all__ = [
    "ConfigError",
    "Device",
    "DeviceKind",
    "DevicesFile",
    "key_path",
    "load_config",
    "parse_config",
]
