"""What the ``pypool`` commands share: exit codes, the optional extras
(``rich`` for a progress bar, ``matplotlib`` for charts), the progress bar,
plain-text tables, the environment a result was measured in, writing
``--json`` and ``--plot``, and the argument types of paths and counts."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = [
    "CLI_EXTRA",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Progress",
    "check_plot",
    "environment",
    "hint_extras",
    "importable",
    "json_path",
    "png_figure",
    "png_path",
    "positive",
    "pyplot",
    "table",
    "version",
    "write_outputs",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


CLI_EXTRA = "pip install 'pypool[cli]'"
_hinted = False


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def hint_extras(command: str, plot: bool = False) -> None:
    """Says once, on stderr, how to get the progress bar and the charts when
    ``rich`` or ``matplotlib`` is missing (``--plot`` without matplotlib is an
    error, reported by :func:`check_plot`, so not hinted at)."""
    global _hinted
    missing = [m for m in ("rich", "matplotlib") if not importable(m)]
    if plot:
        missing = [m for m in missing if m != "matplotlib"]
    if _hinted or not missing:
        return
    _hinted = True
    print(
        f"pypool {command}: for a progress bar and charts (--plot), {CLI_EXTRA} "
        f"(missing: {', '.join(missing)})",
        file=sys.stderr,
    )


def check_plot(command: str, path: str | None) -> str | None:
    """None when ``--plot`` can be honoured, else the one-line error."""
    if path is not None and not importable("matplotlib"):
        return f"pypool {command}: --plot needs matplotlib: {CLI_EXTRA}"
    return None


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def png_figure(path: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
    """The axes of a ``pyplot.subplots(*args, **kwargs)`` figure, written to
    ``path`` as a PNG when the block ends without an error, closed always."""
    plt = pyplot()
    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


class Progress:
    """A progress bar on stderr, only when it is a terminal: ``rich``'s when it
    is installed, else one overwritten line."""

    def __init__(self, total: int = 0) -> None:
        self.on = sys.stderr.isatty()
        self.total = max(total, 1)
        self.done = 0
        self._rich: Any = None
        self._task: Any = None
        if self.on and importable("rich"):
            try:
                from rich.console import Console
                from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as RichProgress

                self._rich = RichProgress(
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                self._task = self._rich.add_task("", total=self.total)
                self._rich.start()
            except Exception:
                self._rich = None

    def set_total(self, total: int) -> None:
        self.total = max(total, 1)
        if self._rich is not None:
            self._rich.update(self._task, total=self.total)

    def show(self, text: str, advance: bool = True) -> None:
        if advance:
            self.done = min(self.done + 1, self.total)
        if not self.on:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, description=text)
            return
        width = 24
        filled = width * self.done // self.total
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r\x1b[K[{bar}] {100 * self.done // self.total:3d}% {text}")
        sys.stderr.flush()

    def clear(self) -> None:
        if not self.on:
            return
        if self._rich is not None:
            with contextlib.suppress(Exception):
                self._rich.stop()
            self._rich = None
            self.on = False
            return
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def table(rows: list[list[str]], right: Sequence[bool]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if r else cell.ljust(width)
            for cell, width, r in zip(row, widths, right, strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return lines


def environment(started: str) -> dict[str, Any]:
    import pypool

    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = None
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "pypool": pypool.__version__,
        "core": pypool.CORE,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "switch_interval": sys.getswitchinterval(),
        "started": started,
    }


def write_outputs(
    command: str,
    doc: Callable[[], dict[str, Any]],
    json_path: str | None,
    plot: Callable[[str], None],
    plot_path: str | None,
) -> bool:
    """Writes ``--json`` and ``--plot``; False (and one line on stderr each)
    when one cannot be written."""
    ok = True
    if json_path is not None:
        try:
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(doc(), f, indent=2)
                f.write("\n")
        except OSError as exc:
            print(
                f"pypool {command}: cannot write {json_path}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            ok = False
    if plot_path is not None:
        try:
            plot(plot_path)
        except Exception as exc:
            reason = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
            print(f"pypool {command}: cannot write {plot_path}: {reason}", file=sys.stderr)
            ok = False
    return ok


def positive(text: str, high: int = 10**6) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= high:
        raise argparse.ArgumentTypeError(f"must be between 1 and {high}, got {value}")
    return value


def json_path(text: str) -> str:
    parent = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"directory {os.path.dirname(text)!r} does not exist")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    return text


def png_path(text: str) -> str:
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"expected a .png file name, got {text!r}")
    return json_path(text)


def version() -> str:
    import pypool

    return f"pypool {pypool.__version__} (core: {pypool.CORE})"
