"""The base every config model derives from: unknown keys are errors, not silently ignored."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: frozen, unknown keys forbidden, every field described."""

    model_config = ConfigDict(extra="forbid", frozen=True)
