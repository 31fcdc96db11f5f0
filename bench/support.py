"""What the benchmarks share: timing two sides in short alternating rounds
on a noisy machine, comparing them round by round, and their setup.

Each round runs every side once, back to back, so load that changes from
one second to the next hits both sides alike; the order flips every round
so neither side always goes first. The garbage collector is off while
timing; the youngest generation, which holds the cycles a round leaves
(app contexts, ORM state), is collected between rounds, off the clock.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import typing as t

from flask_partition.testing import unavailable_reason

if t.TYPE_CHECKING:
    from flask_partition.topology import Router

S = t.TypeVar("S")


def alternate(sides: list[S], rounds: int, run: t.Callable[[S, int], None]) -> None:
    """Call ``run(side, index)`` for every side in each of ``rounds`` rounds,
    the order of the sides reversed every round.

    :param sides: The sides, first in the first round.
    :param rounds: How many rounds.
    :param run: Times one side for one round and records it.
    """
    gc.collect()
    gc.disable()
    try:
        for index in range(rounds):
            for side in sides:
                run(side, index)
            sides = sides[::-1]
            gc.collect(0)
    finally:
        gc.enable()


def paired(
    a: list[float], b: list[float], combine: t.Callable[[float, float], float]
) -> float:
    """The median over rounds of ``combine(a, b)`` for the same round."""
    return statistics.median(combine(x, y) for x, y in zip(a, b, strict=True))


def positive(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def postgres_missing(script: str) -> bool:
    """Say on stderr why PostgreSQL cannot run here, if it cannot; the
    benchmark then exits with status 2.
    """
    reason = unavailable_reason()
    if reason is None:
        return False
    print(f"{script} needs PostgreSQL: {reason}", file=sys.stderr)
    return True


def dispose(router: Router) -> None:
    """Stop the router's scatter threads and close every pooled connection."""
    router.close()
    for engine in router.engines():
        engine.dispose()
