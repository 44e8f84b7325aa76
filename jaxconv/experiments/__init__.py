"""Runnable experiments: one module each, exposing ``CONFIG`` (full size) and ``SMOKE`` (tests, CI).

A study module exposes ``VARIANTS`` and ``SMOKE_VARIANTS`` (name -> Config) instead; see
``jaxconv.study``. ``jaxconv train NAME`` and ``python -m jaxconv.experiments.NAME`` run the same thing.

NAME may also be a user's experiment outside the package, run exactly like a built-in one: a file
(``my_exp.py``, or any NAME with a ``/``), loaded from its path, or an importable module
(``myexp.my_exp``, a dotted name that is not a built-in one), each defining ``CONFIG`` (optionally
``SMOKE``) or a study's ``VARIANTS``. Its default workdir is ``runs/<CONFIG.name>`` (``run_name``).

This package is data below the CLI: it imports ``jaxconv.config`` and ``jaxconv.models`` (presets), never the CLI.
An experiment's ``if __name__ == "__main__":`` block, which runs only when the file is the program,
hands its command line to ``jaxconv.cli.run_experiment_module``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
import traceback
from pathlib import Path
from types import ModuleType

from jaxconv.config import Config
from jaxconv.errors import ConfigError


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str, smoke: bool = False) -> Config:
    module = _module(name)
    if is_study(name):
        raise ConfigError(f"{name} is a study of several runs; use load_study")
    attribute = "SMOKE" if smoke else "CONFIG"
    if not hasattr(module, attribute):
        raise ConfigError(f"{_where(name)} defines no {attribute}" + (" (--smoke needs one)" if smoke else ""))
    return _checked(getattr(module, attribute), f"{_where(name)}: {attribute}")


def is_study(name: str) -> bool:
    return hasattr(_module(name), "VARIANTS")


def load_study(name: str, smoke: bool = False) -> dict[str, Config]:
    module = _module(name)
    attribute = "SMOKE_VARIANTS" if smoke else "VARIANTS"
    variants = getattr(module, attribute, None)
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{_where(name)}: {attribute} must be a non-empty dict of name -> Config")
    return {key: _checked(config, f"{_where(name)}: {attribute}[{key!r}]") for key, config in variants.items()}


def run_name(name: str, smoke: bool = False) -> str:
    """The default workdir's name under ``runs/``: a built-in experiment's name; a user's experiment's
    ``CONFIG.name`` (a user's study: its module's name); ``-smoke`` appended for the smoke variant."""
    if name in names():
        base = name
    elif is_study(name):
        base = _module(name).__name__.rpartition(".")[2]
    else:
        base = load(name).name
    return base + ("-smoke" if smoke else "")


def summary(name: str) -> str:
    doc = _module(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def is_file(name: str) -> bool:
    """Whether NAME names an experiment file (ends in .py or holds a path separator)."""
    return name.endswith(".py") or "/" in name or "\\" in name


_USER_MODULES: dict[str, ModuleType] = {}  # resolved path or module name -> the loaded module


def _module(name: str) -> ModuleType:
    if is_file(name):
        return _file_module(name)
    if name in names():
        return importlib.import_module(f"{__name__}.{name}")
    if "." in name.strip(".") and name not in _USER_MODULES:
        _USER_MODULES[name] = _import_user_module(name)
    if name in _USER_MODULES:
        return _USER_MODULES[name]
    raise ConfigError(f"unknown experiment {name!r}; experiments: {', '.join(names())} "
                      "(or a file such as my_exp.py, or an importable module such as myexp.my_exp)")


def _file_module(name: str) -> ModuleType:
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(f"experiment file {name} not found" if not path.exists() else
                          f"experiment file {name} is not a file")
    key = str(path.resolve())
    if key not in _USER_MODULES:
        module_name = f"_jaxconv_user_experiment_{len(_USER_MODULES)}_{path.stem.replace('-', '_')}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"experiment file {name} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses defined in the file look their module up here
        try:
            spec.loader.exec_module(module)
        except BaseException as e:
            del sys.modules[module_name]
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            raise ConfigError(f"experiment file {name}: {_error_line(e, path)}") from None
        _USER_MODULES[key] = module
    module = _USER_MODULES[key]
    _check_defines(module, f"experiment file {name}")
    return module


def _import_user_module(name: str) -> ModuleType:
    if os.getcwd() not in sys.path and "" not in sys.path:  # as `python -m`, also from the `jaxconv` script
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise ConfigError(f"unknown experiment {name!r}: no built-in experiment and no importable module of "
                              f"that name (is its directory the current one or on PYTHONPATH?)") from None
        raise ConfigError(f"experiment module {name}: {_error_line(e)}") from None
    except Exception as e:
        raise ConfigError(f"experiment module {name}: {_error_line(e)}") from None
    _check_defines(module, f"experiment module {name}")
    return module


def _check_defines(module: ModuleType, where: str) -> None:
    if not hasattr(module, "CONFIG") and not hasattr(module, "VARIANTS"):
        raise ConfigError(f"{where} defines no CONFIG (a jaxconv.config.Config), nor a study's VARIANTS")


def _checked(config: object, where: str) -> Config:
    if not isinstance(config, Config):
        raise ConfigError(f"{where} is of type {type(config).__name__}, not a jaxconv.config.Config")
    return config


def _where(name: str) -> str:
    if is_file(name):
        return f"experiment file {name}"
    return name if name in names() else f"experiment module {name}"


def _error_line(error: BaseException, path: Path | None = None) -> str:
    """One line for an error raised while loading a user's experiment, with its line in ``path``."""
    if isinstance(error, SyntaxError):
        return f"syntax error at line {error.lineno}: {error.msg}"
    text = str(error).strip().splitlines()
    line = ""
    if path is not None:
        lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
                 if Path(frame.filename).resolve() == path.resolve()]
        line = f"line {lines[-1]}: " if lines else ""
    return line + (f"{type(error).__name__}: {text[0]}" if text else type(error).__name__)
