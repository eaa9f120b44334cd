"""JAX's persistent compilation cache for trainmap's commands: a second run of a command loads its
XLA programs from disk instead of compiling them again.

The cache lives under ``$TRAINMAP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/trainmap/jax`` (by
default ``~/.cache/trainmap/jax``). ``trainmap --no-compile-cache`` or
``TRAINMAP_NO_COMPILE_CACHE=1`` turns it off; a ``JAX_COMPILATION_CACHE_DIR`` set by the user wins.
Every compiled program is stored (``MIN_COMPILE_S`` = 0: the small ones add up). Removing the folder is
always safe.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MIN_COMPILE_S = 0.0


def cache_dir() -> Path:
    """Where trainmap keeps JAX's compilation cache."""
    if os.environ.get("TRAINMAP_CACHE_DIR"):
        return Path(os.environ["TRAINMAP_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "trainmap" / "jax"


def enable_compilation_cache(enabled: bool = True) -> Path | None:
    """Turn JAX's persistent compilation cache on for this process (before or after JAX is
    imported; importing JAX is left to the first computation).

    Returns:
        The cache folder, or None when it is off (``enabled`` False, ``TRAINMAP_NO_COMPILE_CACHE``
        set, or the folder cannot be created).
    """
    if not enabled or os.environ.get("TRAINMAP_NO_COMPILE_CACHE", "").strip() not in ("", "0"):
        return None
    path = Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or cache_dir())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache rather than fail
    settings = {"jax_compilation_cache_dir": str(path),
                "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_S}
    for name, value in settings.items():
        os.environ.setdefault(name.upper(), str(value))
    if "jax" in sys.modules:  # already imported: its flags have read the environment
        import jax

        for name in settings:
            jax.config.update(name, type(settings[name])(os.environ[name.upper()]))
    return path
