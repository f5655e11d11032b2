"""``pypool sweep``: the rules (sizes, cap, recommendation) and runs against
the real PostgreSQL (``db`` marker, ``dsn`` fixture)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from _support.cli import PNG_SIGNATURE, pypool_env
from pypool.cli import sweep as _sweep

TINY = ("--max-size", "4", "--seconds", "0.5", "--clients", "4")
RESULT_KEYS = {"size", "cycles", "seconds", "throughput", "p50_ms", "p99_ms", "server_in_use"}


def _pypool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Runs ``pypool``; the one-line hint about the ``pypool[cli]`` extra
    (printed when it is not installed; tested in test_cli.py) is left out of
    ``stderr``."""
    proc = subprocess.run(
        [sys.executable, "-m", "pypool", *args],
        capture_output=True,
        text=True,
        env=pypool_env(),
        timeout=timeout,
    )
    lines = proc.stderr.splitlines(keepends=True)
    proc.stderr = "".join(line for line in lines if "pypool[cli]" not in line)
    return proc


def _with_password(dsn: str, password: str) -> str:
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.hostname or "127.0.0.1"
    netloc = f"{user}:{password}@{host}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc))


def _server_settings(dsn: str) -> dict[str, int]:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(dsn, autocommit=True) as conn:

        def one(sql: str) -> Any:
            return conn.execute(sql).fetchone()[0]

        return {
            "max_connections": int(one("SHOW max_connections")),
            "superuser_reserved_connections": int(one("SHOW superuser_reserved_connections")),
            "reserved_connections": int(
                one("SELECT current_setting('reserved_connections', true)") or 0
            ),
        }


# ------------------------------------------------------------------ the rules


def test_sizes() -> None:
    assert _sweep.sizes(1) == [1]
    assert _sweep.sizes(4) == [1, 2, 4]
    assert _sweep.sizes(32) == [1, 2, 4, 8, 16, 32]
    assert _sweep.sizes(20) == [1, 2, 4, 8, 16, 20]
    assert _sweep.sizes(0) == []


def test_cap() -> None:
    assert _sweep.cap(32, 100, 3, 5) == 32
    assert _sweep.cap(32, 20, 3, 5) == 12  # the server's free slots
    assert _sweep.cap(32, 10, 3, 7) == 0
    assert _sweep.cap(32, 10, 3, 9) == 0


def _r(size: int, throughput: float) -> dict[str, Any]:
    return {"size": size, "throughput": throughput}


def test_recommend() -> None:
    results = [_r(1, 100), _r(2, 190), _r(4, 390), _r(8, 400), _r(16, 380)]
    rec = _sweep.recommend(results, 5)
    assert rec is not None
    assert rec["size"] == 4 and rec["best_size"] == 8
    assert "smallest within 5%" in rec["reason"]
    assert _sweep.recommend(results, 0)["size"] == 8  # type: ignore[index]
    assert _sweep.recommend(results, 80)["size"] == 1  # type: ignore[index]
    rising = _sweep.recommend([_r(1, 100), _r(2, 200)], 5)
    assert (
        rising is not None
        and rising["size"] == 2
        and "larger one may do better" in rising["reason"]
    )
    assert _sweep.recommend([], 5) is None


def test_percentile() -> None:
    values = [float(x) for x in range(1, 101)]
    assert _sweep.percentile(values, 0.5) == 50.0
    assert _sweep.percentile(values, 0.99) == 99.0
    assert _sweep.percentile([3.0], 0.99) == 3.0


def test_no_dsn_is_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    from pypool import cli

    monkeypatch.delenv("PYPOOL_SWEEP_DSN", raising=False)
    rc = cli.main(["sweep", "--dsn", ""])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "--dsn" in err


# ------------------------------------------------------------------ real runs


def _check_doc(doc: dict[str, Any], dsn: str, max_size: int = 4) -> None:
    assert doc["schema"] == "pypool-sweep/1"
    assert doc["complete"] is True and doc["error"] is None
    server = doc["server"]
    settings = _server_settings(dsn)
    for key, value in settings.items():
        assert server[key] == value
    assert isinstance(server["version"], str) and server["version"]
    assert isinstance(server["in_use"], int) and server["in_use"] >= 1  # the sweep's own
    reserved = settings["superuser_reserved_connections"] + settings["reserved_connections"]
    expected_cap = min(max_size, settings["max_connections"] - reserved - server["in_use"])
    assert server["available"] == settings["max_connections"] - reserved - server["in_use"]
    s = doc["settings"]
    assert s["cap"] == expected_cap
    assert s["sizes"] == _sweep.sizes(expected_cap)
    assert max(s["sizes"]) == expected_cap
    assert s["clients"] == 4 and s["seconds"] == 0.5 and s["max_size"] == max_size
    assert s["tolerance"] == 5.0
    assert s["workload"] == {"kind": "query", "sql": "SELECT 1"}

    results = doc["results"]
    assert [r["size"] for r in results] == s["sizes"]
    for r in results:
        assert set(r) == RESULT_KEYS
        assert r["cycles"] > 0 and r["throughput"] > 0 and r["seconds"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["server_in_use"] is None or r["server_in_use"] >= r["size"]

    rec = doc["recommended"]
    assert set(rec) == {
        "size", "throughput", "best_size", "best_throughput", "reason", "within_limits"
    }  # fmt: skip
    assert (
        f"{rec['size']} server connections, within the {server['available']}"
        in (rec["within_limits"])
    )
    assert rec["size"] in s["sizes"]
    best = max(r["throughput"] for r in results)
    assert rec["best_throughput"] == best
    ok = [r["size"] for r in results if r["throughput"] >= best * (1 - s["tolerance"] / 100)]
    assert rec["size"] == min(ok)


@pytest.mark.db
@pytest.mark.timeout(120)
def test_sweep_real_server(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    plot = tmp_path / "sweep.png"
    args = ["sweep", "--dsn", dsn, *TINY, "--json", str(path)]
    have_plot = _sweep.check_plot("sweep", str(plot)) is None
    if have_plot:
        args += ["--plot", str(plot)]
    proc = _pypool(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(path.read_text(encoding="utf-8"))
    _check_doc(doc, dsn)

    lines = proc.stdout.splitlines()
    assert lines[0].startswith("pypool sweep: ")
    assert any(line.startswith("server: PostgreSQL ") and "max_connections" in line
               for line in lines)  # fmt: skip
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["size"])
    assert lines[header].split() == [
        "size",
        "cycles/s",
        "p50",
        "ms",
        "p99",
        "ms",
        "server",
        "in",
        "use",
    ]
    rows = [line.split() for line in lines[header + 1 : header + 1 + len(doc["results"])]]
    assert [int(row[0]) for row in rows] == doc["settings"]["sizes"]
    assert all(len(row) == 5 for row in rows)
    rec = next(line for line in lines if line.startswith("Recommended pool size: "))
    assert rec.startswith(f"Recommended pool size: {doc['recommended']['size']}: ")
    if have_plot:
        data = plot.read_bytes()
        assert len(data) > 0 and data.startswith(PNG_SIGNATURE)


@pytest.mark.db
@pytest.mark.timeout(120)
def test_sweep_password_masked(dsn: str, tmp_path: Path) -> None:
    """A password in the DSN (trust auth ignores it) never appears in the output."""
    secret = "s3cr3t-pw"
    path = tmp_path / "sweep.json"
    proc = _pypool("sweep", "--dsn", _with_password(dsn, secret), "--max-size", "1",
                   "--seconds", "0.2", "--clients", "2", "--json", str(path))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr + path.read_text(encoding="utf-8")
    assert ":***@" in proc.stdout


@pytest.mark.db
@pytest.mark.timeout(60)
def test_sweep_script_and_bad_query(dsn: str, tmp_path: Path) -> None:
    script = tmp_path / "work.sql"
    script.write_text("SELECT 1;\nSELECT count(*) FROM pg_class;\n", encoding="utf-8")
    proc = _pypool("sweep", "--dsn", dsn, "--script", str(script), "--max-size", "2",
                   "--seconds", "0.2", "--clients", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "workload: script" in proc.stdout

    proc = _pypool("sweep", "--dsn", dsn, "--query", "SELEC 1", "--seconds", "0.2")
    assert proc.returncode == 1
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and "SELEC" in proc.stderr


@pytest.mark.timeout(60)
def test_unreachable_dsn_is_one_line() -> None:
    pytest.importorskip("psycopg")
    secret = "s3cr3t-pw"
    # Port 1 on the loopback: nothing listens there, the connect is refused at once.
    proc = _pypool("sweep", "--dsn", f"postgresql://postgres:{secret}@127.0.0.1:1/test",
                   "--seconds", "0.2")  # fmt: skip
    assert proc.returncode not in (0, None)
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("pypool sweep: cannot connect to ")
    assert "Traceback" not in proc.stderr
    assert secret not in proc.stderr and ":***@" in proc.stderr


@pytest.mark.db
@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child is POSIX")
def test_ctrl_c_prints_results_so_far(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "partial.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pypool", "sweep", "--dsn", dsn, "--max-size", "8",
         "--seconds", "1.5", "--clients", "4", "--json", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=pypool_env(),
    )  # fmt: skip
    time.sleep(4.5)  # sizes 1 and 2 done (1.5 s each), a later one running
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert "interrupted" in err
    assert "(incomplete)" in out
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["complete"] is False and doc["error"] == "interrupted"
    done = [r["size"] for r in doc["results"]]
    assert 1 <= len(done) < len(doc["settings"]["sizes"])
    assert done == doc["settings"]["sizes"][: len(done)]
    for size in done:
        assert any(line.split()[:1] == [str(size)] for line in out.splitlines())


def test_no_psycopg_is_one_line() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'psycopg':\n"
        "            raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from pypool.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "sweep", "--dsn", "postgresql://u:s3cr3t-pw@127.0.0.1:1/x"],
        capture_output=True, text=True, env=pypool_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "pip install 'pypool[psycopg]'" in proc.stderr
    assert "s3cr3t" not in proc.stderr


# ------------------------------------------------------------------ processes


def test_bouncer_pool_sizes_need_the_admin_console(capsys: pytest.CaptureFixture[str]) -> None:
    from pypool import cli

    rc = cli.main(["sweep", "--dsn", "postgresql://u@127.0.0.1:1/x",
                   "--bouncer-pool-sizes", "2,4"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "--admin-dsn" in err


def test_sizing_says_why_the_total_fits() -> None:
    s = _sweep._Sweep(dsn="d", workload={}, clients=4, seconds=1.0, max_size=8,
                      tolerance=5.0, started="", processes=4)  # fmt: skip
    s.server = {"max_connections": 100, "superuser_reserved_connections": 3,
                "reserved_connections": 0, "in_use": 5, "available": 92}  # fmt: skip
    text = _sweep.sizing(s, 8)
    assert "4 processes x 8 = 32 server connections" in text
    assert "within the 92 the server has free" in text
    s.bouncer = {"available": 90, "max_client_conn": 100, "clients_in_use": 10,
                 "server_limit": 6, "pool_size": 5, "reserve_pool": 1,
                 "pool_mode": "transaction"}  # fmt: skip
    text = _sweep.sizing(s, 8)
    assert "32 client connections to PgBouncer, within the 90 it has free" in text
    assert "at most 6 server connections" in text


@pytest.mark.db
@pytest.mark.timeout(180)
def test_sweep_processes_direct(dsn: str, tmp_path: Path) -> None:
    """Two worker processes, each with its own pool: sizes are per process,
    the server sees both pools, and the recommendation counts both."""
    path = tmp_path / "sweep.json"
    proc = _pypool("sweep", "--dsn", dsn, "--processes", "2", "--clients", "2",
                   "--max-size", "2", "--seconds", "0.3", "--json", str(path))  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["complete"] is True and doc["error"] is None
    assert doc["settings"]["processes"] == 2 and doc["bouncer"] is None
    available = doc["server"]["available"]
    assert doc["settings"]["cap"] == min(2, available // 2)
    for r in doc["results"]:
        assert r["processes"] == 2 and r["total_size"] == 2 * r["size"]
        assert r["cycles"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
        # Both processes' pools are open during the run, and the monitor too.
        assert r["server_in_use"] is None or r["server_in_use"] > r["total_size"]
    rec = doc["recommended"]
    assert (
        f"2 processes x {rec['size']} = {2 * rec['size']} server connections"
        in (rec["within_limits"])
    )
    assert "Recommended pool size per process: " in proc.stdout
    assert "2 processes x 2 client threads, a pool in each" in proc.stdout
