"""Runnable experiments: one module each, exposing ``CONFIG`` (full size) and ``SMOKE`` (tests, CI).

``jaxconv train NAME`` and ``python -m experiments.NAME`` run the same thing.
"""

from __future__ import annotations

import importlib
import pkgutil

from jaxconv.config import Config
from jaxconv.errors import ConfigError


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str, smoke: bool = False) -> Config:
    if name not in names():
        raise ConfigError(f"unknown experiment {name!r}; experiments: {', '.join(names())}")
    module = importlib.import_module(f"{__name__}.{name}")
    return module.SMOKE if smoke else module.CONFIG


def summary(name: str) -> str:
    doc = importlib.import_module(f"{__name__}.{name}").__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
