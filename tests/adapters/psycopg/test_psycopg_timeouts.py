"""The psycopg pools bound their connects as ``pypool.dbapi.connect_factory``
does: ``connect_timeout`` and, from the I/O bound, TCP keepalives and
``tcp_user_timeout``, each only where the conninfo and ``kwargs`` set none.

The recovery test runs psycopg_pool beside pypool (both cores, sync and
async, pool and null pool) through a fault proxy that accepts connects and
never answers them, then lets the network return: pypool's figures are
asserted, psycopg_pool's reported.

Needs PostgreSQL (``dsn`` fixture).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("psycopg_pool")

from _support.faultproxy import proxies  # noqa: E402
from _support.psycopg_impls import (  # noqa: E402
    MODES,
    combinations,
    describe,
    make_api,
    report,
    run_all,
)
from pypool.psycopg.base import CONNECT_BOUNDS  # noqa: E402

pytestmark = pytest.mark.db

ALL_BOUNDS = {"connect_timeout", "keepalives", "keepalives_idle", "tcp_user_timeout"}


def _recorder(mode: str, seen: list[dict[str, Any]]) -> type:
    if mode == "async":

        class AsyncRecorder(psycopg.AsyncConnection):  # type: ignore[misc]
            @classmethod
            async def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
                seen.append(dict(kwargs))
                return await super().connect(conninfo, **kwargs)

        return AsyncRecorder

    class Recorder(psycopg.Connection):  # type: ignore[misc]
        @classmethod
        def connect(cls, conninfo: str = "", **kwargs: Any) -> Any:
            seen.append(dict(kwargs))
            return super().connect(conninfo, **kwargs)

    return Recorder


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("dsn_extra", "kwargs", "expected"),
    [
        pytest.param("", {}, {"connect_timeout": 10, "tcp_user_timeout": 30000}, id="added"),
        pytest.param(
            " connect_timeout=3",
            {"tcp_user_timeout": 5000},
            {"tcp_user_timeout": 5000},
            id="the-users-kept",
        ),
    ],
)
def test_connect_bounds_added_where_the_user_set_none(
    dsn: str, core_module: Any, mode: str, dsn_extra: str, kwargs: dict[str, Any],
    expected: dict[str, Any],
) -> None:  # fmt: skip
    seen: list[dict[str, Any]] = []
    conninfo = (
        psycopg.conninfo.make_conninfo("", **psycopg.conninfo.conninfo_to_dict(dsn)) + dsn_extra
    )

    async def scenario() -> int:
        impl = "pypool-native" if core_module.__name__.endswith("_corepool") else "pypool-python"
        api = make_api(
            impl, mode, "pool", conninfo=conninfo, min_size=1, kwargs=kwargs,
            connection_class=_recorder(mode, seen),
        )  # fmt: skip
        await api.open(wait=True)
        try:
            async with api.connection() as conn:
                return (await api.fetch(conn, "SHOW tcp_keepalives_idle"))[0][0]  # type: ignore[no-any-return]
        finally:
            await api.close()

    asyncio.run(scenario())
    assert seen, "no connect"
    given = seen[0]
    for key, value in expected.items():
        assert given[key] == value, given
    if dsn_extra:  # set in the conninfo: not passed again
        assert "connect_timeout" not in given, given
    assert {"keepalives", "keepalives_idle"} <= set(given), given


@pytest.mark.timeout(90)
def test_recovery_after_connects_accepted_and_never_answered(dsn: str) -> None:
    """Connects accepted and never answered (the proxy holds them), then the
    network returns: a pypool psycopg pool serves again within its connect
    bound (plus a few seconds); psycopg_pool's figure is reported beside."""
    bound = CONNECT_BOUNDS["connect_timeout"] + 2.0
    outage = 0.5
    with proxies() as make_proxy:
        jobs = {}
        for impl, mode, kind in combinations():
            proxy = make_proxy(dsn)

            async def job(
                impl: str = impl, mode: str = mode, kind: str = kind, proxy: Any = proxy
            ) -> float:
                proxy.blackhole_new()
                api = make_api(
                    impl, mode, kind, conninfo=proxy.dsn(dsn), min_size=1, max_size=1,
                    reconnect_timeout=60,
                )  # fmt: skip
                await api.open()
                try:
                    if kind == "null":  # a connect starts on demand
                        with pytest.raises(api.mod.PoolTimeout):
                            await api.getconn(timeout=outage)
                    else:
                        await asyncio.sleep(outage)
                    proxy.passthrough()
                    back = time.monotonic()
                    async with api.connection(timeout=bound + 5) as conn:
                        await api.fetch(conn, "SELECT 1")
                    return time.monotonic() - back
                finally:
                    await api.close(timeout=0.2)

            jobs[f"{impl}/{mode}/{kind}"] = job
        outcomes = run_all(
            jobs, timeout=bound + outage + 0.5, required=lambda label: label.startswith("pypool")
        )
        rows = describe(
            outcomes,
            lambda seconds: f"serving {seconds:.2f} s after the network returned",
            lambda elapsed: f"not serving {elapsed - outage:.1f} s after the network returned",
        )
        text = report("connects accepted and never answered, then the network returns:", rows)
    for label, o in outcomes.items():
        if label.startswith("pypool"):
            assert o.finished and o.error is None, text
            assert isinstance(o.result, float) and o.result <= bound, text
