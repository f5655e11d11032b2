"""The version comes from one place: ``pyproject.toml``'s ``version``, which
the installed distribution's metadata carries, read by ``pypool.__version__``
at run time and shown by the CLI."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pypool

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_version() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    match = re.search(r'^version\s*=\s*"([^"]+)"', project, re.M)
    assert match is not None, "pyproject.toml's [project] has no version"
    return match.group(1)


def test_version_is_the_installed_metadata() -> None:
    assert pypool.__version__ == importlib.metadata.version("pypool")


def test_the_installed_version_is_pyproject_s() -> None:
    # Fails when the package under test was built from another pyproject.toml
    # (reinstall after changing the version).
    assert importlib.metadata.version("pypool") == _pyproject_version()


def test_no_version_is_assigned_in_the_package() -> None:
    assigned = re.compile(r"^[ \t]*__version__[ \t]*(?::[^=\n]*)?=[ \t]*[\"']", re.M)
    for path in (ROOT / "src").rglob("*.py*"):
        text = path.read_text(encoding="utf-8")
        assert not assigned.search(text), f"{path} sets __version__"


def _child(code: str) -> dict[str, str]:
    """Runs ``code`` in a fresh interpreter where ``importlib.metadata``
    answers for pypool as the code's ``VERSION`` says; returns its JSON."""
    prelude = textwrap.dedent(
        """\
        import importlib.metadata, json

        _real = importlib.metadata.version

        def version(name):
            if name != "pypool":
                return _real(name)
            if VERSION is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return VERSION

        importlib.metadata.version = version
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, str] = json.loads(proc.stdout.splitlines()[-1])
    return result


def test_the_version_is_read_at_run_time() -> None:
    # Whatever the installed metadata says is the version: it is not copied
    # into the package, so it cannot drift from pyproject.toml.
    out = _child(
        """\
        VERSION = "9.8.7.dev1"
        import pypool
        from pypool import cli

        print(json.dumps({
            "version": pypool.__version__,
            "environment": cli.output.environment("now")["pypool"],
            "cli": cli.output.version(),
        }))
        """
    )
    assert out == {
        "version": "9.8.7.dev1",
        "environment": "9.8.7.dev1",
        "cli": f"pypool 9.8.7.dev1 (core: {pypool.CORE})",
    }


def test_a_source_tree_never_installed_says_so() -> None:
    out = _child(
        """\
        VERSION = None
        import pypool

        print(json.dumps({"version": pypool.__version__}))
        """
    )
    assert out == {"version": "0+unknown"}


def test_version_is_public() -> None:
    assert "__version__" in pypool.__all__
    namespace: dict[str, object] = {}
    exec("from pypool import *", namespace)
    assert namespace["__version__"] == pypool.__version__
