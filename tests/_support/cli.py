"""What the CLI tests share: the environment of a child ``python -m pypool``
and the signature of the PNG files it draws."""

from __future__ import annotations

import os
from pathlib import Path

import pypool

__all__ = ("PNG_SIGNATURE", "pypool_env")

#: The first bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pypool_env() -> dict[str, str]:
    """The environment for a child ``python -m pypool``: this pypool first."""
    env = dict(os.environ)
    here = str(Path(pypool.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env
