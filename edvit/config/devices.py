"""The devices file: the edge devices a bundle is planned for (memory, compute, what they sense)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, field_validator

from edvit.config.base import StrictModel
from edvit.ids import Id


class DeviceKind(StrEnum):
    camera = "camera"
    microphone = "microphone"
    compute = "compute"


class Device(StrictModel):
    id: Id = Field(
        description="Device id, also the node id of the edge-node that runs on it.",
    )
    memory_mib: float = Field(
        gt=0, description="Memory free for sub-model weights (MiB of fp32 weights)."
    )
    gmacs_per_s: float = Field(
        gt=0, description="Sustained compute of the device in GMAC per second."
    )
    kind: DeviceKind = Field(
        default=DeviceKind.compute,
        description="What the device senses: camera, microphone, or compute only (relay).",
    )


class DevicesFile(StrictModel):
    devices: list[Device] = Field(
        min_length=1, description="The devices sub-models may be assigned to, in order."
    )

    @field_validator("devices")
    @classmethod
    def _unique_ids(cls, devices: list[Device]) -> list[Device]:
        seen: set[str] = set()
        for d in devices:
            if d.id in seen:
                raise ValueError(f"device id {d.id!r} appears more than once")
            seen.add(d.id)
        return devices
