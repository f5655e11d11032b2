"""Child interpreters that import the same pypool as the test process."""

from __future__ import annotations

import os


def child_env(**overrides: str | None) -> dict[str, str]:
    """An environment for a child interpreter that imports the same pypool
    as this process, with no core-selection variables unless given."""
    import pypool

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYPOOL_")}
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(pypool.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
