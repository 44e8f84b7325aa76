"""Builds jaxconv's C++ XLA FFI handlers on the user's machine, once, into ``cache_root()/native``.

With the machine's C++ compiler (``$CXX``, else ``g++``), against the FFI headers that jaxlib ships, for
this CPU (``-march=native``). The file name carries a digest of the source, the jaxlib version, the
compiler, the flags and the CPU's features, so an edit, an upgrade or another machine sharing the cache
builds its own. Why at run time: the library must match the installed jaxlib's FFI and the CPU it runs
on, and a pure-Python wheel keeps ``pip install`` free of a build step.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import jax
import jaxlib

from jaxconv.paths import cache_root

FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def library_path(source: Path, extra: tuple[str, ...] = ()) -> Path:
    # The headers beside the source (those it may include) are part of its text.
    headers = [h.read_text() for h in sorted(source.parent.glob("*.h"))]
    key = "\n".join([source.read_text(), *headers, jaxlib.__version__, os.environ.get("CXX", "g++"), *FLAGS, *extra,
                     _cpu_features()])
    return cache_root() / "native" / f"{source.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def register(source: Path, handlers: dict[str, str], what: str,
             flags: Callable[[], tuple[str, ...]] = tuple) -> str:
    """Builds ``source`` (``load``) and registers its ``handlers`` ({XLA FFI target: exported symbol}) for
    the CPU. Empty when done; otherwise why not, after one warning that ``what`` is unavailable and XLA's
    convs are used. ``flags()``: more compiler arguments; it raises OSError when a library is missing."""
    try:
        library = load(source, flags())
        for target, symbol in handlers.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")
    except (OSError, AttributeError) as e:
        warnings.warn(f"jaxconv: {what} are unavailable ({e}); using XLA's", stacklevel=3)
        return str(e)
    return ""


def load(source: Path, extra: tuple[str, ...] = ()) -> ctypes.CDLL:
    """``source`` built into a shared library and loaded: built first if missing, and built again if the
    cached file does not load (damaged). ``extra``: more compiler arguments (a library's include and link
    flags), part of the cache key. OSError (compiler missing or failing) when it cannot be built."""
    path = library_path(source, extra)
    library = _loaded(path)
    if library is not None:
        return library
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None:
        raise OSError(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Processes starting together (a run's workers, a test session) build once: the others wait for the
    # builder, then load its library.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        library = _loaded(path)
        if library is None:
            _build(compiler, source, path, extra)
            library = ctypes.CDLL(str(path))
    return library


def _loaded(path: Path) -> ctypes.CDLL | None:
    """The cached library, loaded; None if missing or damaged."""
    if not path.exists():
        return None
    try:
        return ctypes.CDLL(str(path))
    except OSError:
        return None


def _build(compiler: str, source: Path, path: Path, extra: tuple[str, ...]) -> None:
    """Compiles into a temporary file beside ``path``, then renames it: a process loading the library
    meanwhile sees the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", str(source), *extra, "-o", tmp],
                              capture_output=True, text=True)
        if done.returncode:
            last = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            raise OSError(f"{compiler} failed: {last[0]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
