"""Runnable experiments: one module each, exposing ``CONFIG`` (full size) and ``SMOKE`` (tests, CI).

A study module exposes ``VARIANTS`` and ``SMOKE_VARIANTS`` (name -> Config) instead; see
``jaxconv.study``. ``jaxconv train NAME`` and ``python -m jaxconv.experiments.NAME`` run the same thing.

This package is data below the CLI: it imports ``jaxconv.config`` and ``jaxconv.models`` (presets), never the CLI.
An experiment's ``if __name__ == "__main__":`` block, which runs only when the file is the program,
hands its command line to ``jaxconv.cli.run_experiment_module``.
"""

from __future__ import annotations

import importlib
import pkgutil

from jaxconv.config import Config
from jaxconv.errors import ConfigError


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str, smoke: bool = False) -> Config:
    module = _module(name)
    if is_study(name):
        raise ConfigError(f"{name} is a study of several runs; use load_study")
    return module.SMOKE if smoke else module.CONFIG


def is_study(name: str) -> bool:
    return hasattr(_module(name), "VARIANTS")


def load_study(name: str, smoke: bool = False) -> dict[str, Config]:
    module = _module(name)
    return module.SMOKE_VARIANTS if smoke else module.VARIANTS


def _module(name: str):
    if name not in names():
        raise ConfigError(f"unknown experiment {name!r}; experiments: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")


def summary(name: str) -> str:
    doc = importlib.import_module(f"{__name__}.{name}").__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
