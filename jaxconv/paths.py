"""Where jaxconv keeps what it builds or measures once per machine."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$JAXCONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxconv``, else ``~/.cache/jaxconv``."""
    root = os.environ.get("JAXCONV_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxconv"
    return Path(root)
