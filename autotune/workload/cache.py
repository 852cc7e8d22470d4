"""Where the workloads keep what they build or generate: outside the repository, per user.

A llama.cpp build (~15 minutes on 2 cores) and a GGUF model (~1 minute) are too slow to redo per
checkout and too big to commit, so they live in one cache directory, found in this order:
``$AUTOTUNE_CACHE``, ``$XDG_CACHE_HOME/autotune``, ``~/.cache/autotune``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    """The cache directory (not created here). An empty variable counts as unset."""
    env = os.environ if env is None else env
    if env.get("AUTOTUNE_CACHE"):
        return Path(env["AUTOTUNE_CACHE"]).expanduser()
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]).expanduser() / "autotune"
    return Path(env.get("HOME") or Path.home()).expanduser() / ".cache" / "autotune"
