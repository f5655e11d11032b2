"""Settings shared by the cores' stateful property tests (hypothesis state
machines run in lockstep on several implementations)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def machine_settings(max_examples: int, steps: int, *more_health_checks: HealthCheck) -> settings:
    """Reproducible runs (derandomized, no example database, no deadline) of
    ``max_examples`` machines of ``steps`` steps each; ``too_slow`` and
    ``more_health_checks`` are not reported."""
    return settings(
        max_examples=max_examples,
        stateful_step_count=steps,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, *more_health_checks],
    )
