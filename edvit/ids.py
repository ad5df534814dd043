"""The one rule for ids (site, node, sub-model, device): each is also one MQTT topic level.

An id with `/`, `+` or `#` would silently publish to (or subscribe to) other topics, so the
config models, the manifest and every topic builder use this rule and nothing looser.
"""

from __future__ import annotations

import re
from typing import Annotated, Final

from pydantic import Field

ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MAX_ID_LEN: Final = 64
_ID = re.compile(ID_PATTERN)

Id = Annotated[str, Field(pattern=ID_PATTERN, max_length=MAX_ID_LEN)]
"""A pydantic field type for ids; add a `description` with `Field` where it is declared."""


class IdError(ValueError):
    """An id that breaks the rule: names the id's role and says what is wrong."""


def check_id(value: object, what: str = "id") -> str:
    """`value` if it is a valid id, else IdError saying why (`what` names its role)."""
    if not isinstance(value, str) or not value:
        raise IdError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_ID_LEN:
        raise IdError(f"{what} {value[:20]!r}… is longer than {MAX_ID_LEN} characters")
    if not _ID.match(value):
        raise IdError(
            f"{what} {value!r} must start with a letter or digit and hold only letters, "
            "digits, '_', '.' and '-' (it is an MQTT topic level)"
        )
    return value
