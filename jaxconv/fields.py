"""Config fields that carry their meaning: the one text that ``jaxconv config`` and ``train --help``
print for a key (``jaxconv.config.meaning``). Used by the run config's sections and the model families'
configs alike."""

from __future__ import annotations

import dataclasses
from typing import Any


def key(default: Any, meaning: str) -> Any:
    """A dataclass field with default ``default`` and its one-line ``meaning``."""
    return dataclasses.field(default=default, metadata={"help": meaning})
