"""The ``pypool`` command: ``bench`` output, its JSON, errors, ``--version``."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import pypool
from _support.cli import PNG_SIGNATURE, pypool_env
from pypool import cli

ALL_CONTENDERS = [c.name for c in cli.CONTENDERS]
NOT_WAITING = {"floor", "psycopg2"}  # contenders that cannot wait: no threaded runs
RESULT_KEYS = {
    "benchmark", "contender", "threads", "unit", "cycles", "samples",
    "median", "min", "max", "q1", "q3", "vs_floor",
}  # fmt: skip


def _pypool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pypool", *args],
        capture_output=True,
        text=True,
        env=pypool_env(),
        timeout=timeout,
    )


def _available() -> list[str]:
    return [c.name for c in cli.CONTENDERS if c.check() is None]


def _section(stdout: str, title: str) -> list[list[str]]:
    """The table under the line starting with ``title``: header and rows, split."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    table = []
    for line in lines[start + 1 :]:
        if not line.strip() or not (line.startswith("contender") or table):
            break
        if table and line.split()[0] not in ALL_CONTENDERS:
            break  # the notes under the table
        table.append(line.split())
    return table


def _number(text: str) -> float:
    return float(text.replace(",", "").rstrip("%"))


def _check_tables(stdout: str, threads: list[int], contenders: list[str]) -> None:
    table = _section(stdout, "Uncontended cycle")
    assert table[0] == ["contender", "ns/cycle", "spread", "x", "floor", "x", "python"]
    assert [row[0] for row in table[1:]] == contenders
    for row in table[1:]:
        assert len(row) == 5
        assert _number(row[1]) > 0
        low, high = (float(x) for x in row[2].split("-"))
        assert 0 < low <= _number(row[1]) <= high
        if "floor" in contenders:
            assert _number(row[3]) > 0
    if "floor" in contenders:
        assert table[1][0] == "floor" and table[1][3] == "1.00"

    table = _section(stdout, "Throughput")
    header = ["contender"]
    for t in threads:
        header += [str(t), "thr"]
    header += ["kept", f"{threads[-1]}/{threads[0]}", "spread"]
    assert table[0] == header
    waiting = [name for name in contenders if name not in NOT_WAITING]
    assert [row[0] for row in table[1:]] == waiting
    for row in table[1:]:
        assert len(row) == 1 + len(threads) + 2
        assert all(_number(cell) > 0 for cell in row[1:-1])
        assert _number(row[-1]) >= 0


def _check_json(doc: dict[str, Any], threads: list[int], quick: bool = True) -> None:
    assert doc["schema"] == "pypool-bench/1"
    assert doc["complete"] is True
    assert doc["rounds_done"] == doc["settings"]["rounds"] >= 1
    env = doc["environment"]
    assert env["pypool"] == pypool.__version__
    assert env["core"] == pypool.CORE
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(env["platform"], str) and env["platform"]
    assert isinstance(env["cpu_count"], int) and env["cpu_count"] >= 1
    settings = doc["settings"]
    assert settings["threads"] == threads
    assert settings["connections"] == 4
    assert settings["quick"] is quick

    assert [c["name"] for c in doc["contenders"]] == ALL_CONTENDERS
    available = _available()
    for c in doc["contenders"]:
        assert set(c) == {"name", "description", "available", "reason"}
        assert c["available"] is (c["name"] in available)
        assert (c["reason"] is None) is c["available"]
        assert isinstance(c["description"], str)

    results = doc["results"]
    for r in results:
        assert set(r) == RESULT_KEYS
        assert isinstance(r["cycles"], int) and r["cycles"] > 0
        assert len(r["samples"]) >= 1
        assert all(isinstance(x, float) and x > 0 for x in r["samples"])
        assert r["min"] <= r["q1"] <= r["median"] <= r["q3"] <= r["max"]
    unc = [r for r in results if r["benchmark"] == "uncontended"]
    assert [r["contender"] for r in unc] == available
    assert all(r["unit"] == "ns/cycle" and r["threads"] == 1 for r in unc)
    assert unc[0]["contender"] == "floor" and unc[0]["vs_floor"] == 1.0
    thr = [r for r in results if r["benchmark"] == "threads"]
    assert [(r["contender"], r["threads"]) for r in thr] == [
        (name, t) for name in available if name not in NOT_WAITING for t in threads
    ]
    assert all(r["unit"] == "cycles/s" and r["vs_floor"] is None for r in thr)
    assert doc["failures"] == []

    ratios = doc["native_vs_python"]
    if "native" in available:
        assert ratios["uncontended_time"] > 0
        assert [x["threads"] for x in ratios["threads_throughput"]] == threads
        assert all(x["ratio"] > 0 for x in ratios["threads_throughput"])
    else:
        assert ratios is None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = _pypool("bench", "--quick", "--json", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout, json.loads(path.read_text(encoding="utf-8"))


def test_bench_subprocess_table(quick_run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = quick_run
    assert stdout.startswith("pypool bench: ")
    _check_tables(stdout, list(cli.bench.DEFAULT_THREADS), _available())
    if "native" not in _available():
        assert "skipped native:" in stdout


def test_bench_subprocess_json(quick_run: tuple[str, dict[str, Any]]) -> None:
    _, doc = quick_run
    _check_json(doc, list(cli.bench.DEFAULT_THREADS))


def test_bench_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out.json"
    rc = cli.main(["bench", "--quick", "--rounds", "1", "--threads", "3,1", "--json", str(path)])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    _check_tables(out, [1, 3], _available())
    doc = json.loads(path.read_text(encoding="utf-8"))
    _check_json(doc, [1, 3])
    assert doc["settings"]["rounds"] == 1


def test_bench_some_contenders(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["bench", "--quick", "--rounds", "1", "--threads", "2", "--contenders", "queue"])
    out, _ = capsys.readouterr()
    assert rc == 0
    _check_tables(out, [2], ["queue"])


@pytest.mark.parametrize(
    "argv",
    [
        ["bench", "--rounds", "0"],
        ["bench", "--rounds", "many"],
        ["bench", "--threads", "1,x"],
        ["bench", "--threads", ""],
        ["bench", "--threads", "0"],
        ["bench", "--contenders", "nosuch"],
        ["bench", "--json", "no-such-directory/out.json"],
        ["bench", "--plot", "chart.svg"],
        ["bench", "--plot", "no-such-directory/chart.png"],
        ["sweep", "--clients", "0"],
        ["sweep", "--max-size", "x"],
        ["sweep", "--seconds", "-1"],
        ["sweep", "--tolerance", "much"],
        ["sweep", "--script", "no-such-file.sql"],
        ["sweep", "--query", "SELECT 1", "--script", "no-such-file.sql"],
        ["bench", "--bogus"],
        ["bench", "extra"],
        ["nosuch"],
        [],
    ],
    ids=lambda argv: " ".join(argv) or "no command",
)
def test_bad_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("pypool: error: ")
    assert "Traceback" not in err


def test_bad_usage_subprocess() -> None:
    proc = _pypool("bench", "--threads", "two")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "--threads" in proc.stderr and "'two'" in proc.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    out, _ = capsys.readouterr()
    assert out == f"pypool {pypool.__version__} (core: {pypool.CORE})\n"

    proc = _pypool("--version")
    assert proc.returncode == 0
    assert proc.stdout == out


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_ctrl_c_prints_results_so_far(tmp_path: Path) -> None:
    path = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pypool", "bench", "--quick", "--rounds", "100000",
         "--contenders", "floor,native,python,queue", "--json", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=pypool_env(),
    )  # fmt: skip
    time.sleep(2.5)  # imported and measuring by now
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert "interrupted" in err
    assert "(interrupted)" in out and "Uncontended cycle" in out
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["schema"] == "pypool-bench/1"
    assert doc["complete"] is False
    assert 0 <= doc["rounds_done"] < 100000


# ------------------------------------------------------------------ --plot, extras

#: Runs ``pypool`` with ``rich`` and ``matplotlib`` unimportable, as on an
#: install without the ``cli`` extra.
WITHOUT_EXTRAS = """
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("rich", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
for name in [m for m in sys.modules if m.partition(".")[0] in ("rich", "matplotlib")]:
    del sys.modules[name]
from pypool.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, *args],
        capture_output=True,
        text=True,
        env=pypool_env(),
        timeout=60,
    )


def test_plot_writes_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    rc = cli.main(
        ["bench", "--quick", "--rounds", "1", "--threads", "1,2",
         "--contenders", "native,python,queue", "--plot", str(path)]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    data = path.read_bytes()
    assert len(data) > 0 and data.startswith(PNG_SIGNATURE)
    assert "pypool[cli]" not in err  # nothing to hint at: the extras are here


def test_hint_once_without_extras(tmp_path: Path) -> None:
    proc = _without_extras("bench", "--quick", "--rounds", "1", "--threads", "1,2",
                           "--contenders", "queue")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("pip install 'pypool[cli]'") == 1, proc.stderr
    hint = [line for line in proc.stderr.splitlines() if "pypool[cli]" in line]
    assert len(hint) == 1 and "rich" in hint[0] and "matplotlib" in hint[0]
    _check_tables(proc.stdout, [1, 2], ["queue"])


def test_plot_without_matplotlib_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bench.png"
    proc = _without_extras("bench", "--quick", "--rounds", "1", "--plot", str(path))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "matplotlib" in proc.stderr and "pip install 'pypool[cli]'" in proc.stderr
    assert not path.exists()


def test_plain_progress_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setattr(cli.output, "importable", lambda module: False)
    progress = cli.output.Progress()
    progress.set_total(4)
    progress.show("step one")
    progress.show("step two")
    progress.clear()
    text = term.getvalue()
    assert "\r" in text and " 25% step one" in text and " 50% step two" in text
    assert text.endswith("\r\x1b[K")


def test_no_progress_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    progress = cli.output.Progress()
    progress.set_total(2)
    progress.show("step")
    progress.clear()
    assert capsys.readouterr().err == ""
