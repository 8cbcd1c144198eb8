"""Where napari-mran writes things the user did not name (never beside their data unasked)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$NAPARI_MRAN_CACHE``, else ``$XDG_CACHE_HOME/napari-mran``, else ``~/.cache/napari-mran``."""
    env = os.environ.get("NAPARI_MRAN_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "napari-mran"
