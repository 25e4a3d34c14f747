"""JAX's persistent compilation cache, on for every entry point.

Importing :mod:`procela_jax` keeps compiled programs in
``$XDG_CACHE_HOME/procela_jax`` (``~/.cache/procela_jax`` by default), however
short their compilation: a second process running the same model (a command-line
call, a restarted notebook) loads its programs instead of compiling them. A
cached program is the very executable XLA compiled, so results never change.

* ``PROCELA_JAX_CACHE=0`` turns it off; ``PROCELA_JAX_CACHE=/some/folder`` uses
  that folder instead.
* A cache the user configured (``JAX_COMPILATION_CACHE_DIR``,
  ``jax.config.update("jax_compilation_cache_dir", ...)`` before the import, or
  ``jax_enable_compilation_cache`` switched off) is left exactly as it is.
* A folder that cannot be written means running without the cache, with one warning.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import jax

_OFF = ("0", "false", "no", "off")

#: The folder in use (None when this package did not set up a cache).
CACHE_DIR: str | None = None
#: Why the cache is or is not set up by this package.
STATUS = "not set up"


def default_dir() -> str:
    """``$XDG_CACHE_HOME/procela_jax``, by default ``~/.cache/procela_jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "procela_jax")


def _writable(path: str) -> str | None:
    """None if ``path`` can hold cache entries, else why not."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None


def setup() -> str | None:
    """Turn the persistent cache on (see the module's docstring); returns its folder,
    or None when it stays as JAX has it."""
    global CACHE_DIR, STATUS
    choice = os.environ.get("PROCELA_JAX_CACHE", "").strip()
    if choice.lower() in _OFF:
        STATUS = "off: PROCELA_JAX_CACHE=0"
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        STATUS = "the user's own: jax_compilation_cache_dir"
        return None
    if not jax.config.jax_enable_compilation_cache:
        STATUS = "off: jax_enable_compilation_cache is False"
        return None
    path = os.path.abspath(os.path.expanduser(choice)) if choice and choice.lower() not in ("1", "on", "yes", "true") else default_dir()
    why = _writable(path)
    if why is not None:
        STATUS = f"off: {path} cannot be written ({why})"
        warnings.warn(f"procela_jax: the compilation cache folder {path} cannot be written ({why}); "
                      "running without a persistent compilation cache (every process compiles its "
                      "programs anew). Set PROCELA_JAX_CACHE to a writable folder, or to 0 to "
                      "silence this.", RuntimeWarning, stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:  # a program compiled before this import fixed the cache as off: start it anew
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    except Exception:  # noqa: BLE001 (then it holds from the next process on)  # pragma: no cover
        pass
    CACHE_DIR, STATUS = path, "on"
    return path
