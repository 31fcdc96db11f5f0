"""Measure what the ``"two_phase"`` commit mode costs a unit of work that
writes one row to each of 2 shard servers, against ``"best_effort"``.

Three independent PostgreSQL servers (``PostgresTopology``): the default
cluster's primary, which holds the commit log, and shard servers ``s1`` and
``s2``, each a primary without replicas. Two Flask apps share one
``PartitionDB`` and the topology, and differ only in
``PARTITION_COMMIT_MODE``. The mode comes from the config rather than from
``commit_mode(...)`` blocks in one app so that no side runs code the other
does not (the block's context variable), and each app has its own engines
and pools: a connection never carries one mode's state into the other's
commit. A unit of work is what a request does: a new app context, rows
added to ``db.session``, ``db.session.commit()``, the context torn down.
Each side writes its own customers, so the rows can be counted per side
afterwards:

* ``best_effort``: one row on ``s1`` and one on ``s2``; one ``COMMIT`` per
  shard;
* ``two_phase``: the same rows in the ``"two_phase"`` app: ``PREPARE
  TRANSACTION`` on both shards, the commit record inserted on the default
  primary, ``COMMIT PREPARED`` on both, the record deleted;
* ``two_phase 1 shard``: one row on ``s1`` in the ``"two_phase"`` app: one
  cluster needs no commit record (the per-commit counts printed show
  whether its transaction is still prepared);
* ``best_effort 1 shard``: the same row in the ``"best_effort"`` app, the
  baseline of the side above.

Rounds are short (``--commits`` 4 per side) and interleaved after an
untimed warm-up, the order of the sides reversed every round, so the two
2-shard sides always run back to back; the garbage collector runs only
between rounds. Each side's time is the median over rounds of its mean
wall time per commit; CPU time is this thread's (the commit runs in it).
``ratio two_phase/best_effort`` is the median over rounds of the
``two_phase`` time over the ``best_effort`` time of the same round, which
the machine's load changes less than either time; ``ratio 1 shard`` is the
same for the two 1-shard sides.

Last, untimed (listeners slow engines for good): a few commits per side
with engine listeners that count, per commit and per cluster, the
statements sent and the commits, prepares and ``COMMIT PREPARED`` done;
the 2-shard sides must show the protocol above, and no 1-shard commit may
touch the commit log. Then, from separate connections: every side's rows
are on the shards it wrote (both shards for the 2-shard sides), and
``pg_prepared_xacts`` on all 3 servers and ``partition_commit_log`` are
empty. Any difference raises an error.

The servers run with ``fsync = off`` on a temporary folder (``/dev/shm``
when it has room), over loopback: the number is the cost in round trips
and server work, not in disk flushes, which ``PREPARE TRANSACTION`` and
``COMMIT PREPARED`` add on a durable server. ``--check`` exits with
status 1 when ``ratio two_phase/best_effort`` is above 5.0: the protocol
costs about twice the round trips (a few more statements, and a
connection of the default primary checked out twice per commit), so only
a gross regression (a check or a connection repeated per commit) goes
that far. Without PostgreSQL it exits with status 2.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import operator
import statistics
import sys
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import Flask

from flask_partition import PartitionDB
from flask_partition import PartitionModel
from flask_partition.testing import keys_by_shard
from flask_partition.testing import PostgresTopology
from flask_partition.transactions import commit_log
from support import alternate
from support import dispose
from support import paired
from support import postgres_missing

LIMIT = 5.0
SHARDS = ("s1", "s2")
DEFAULT = "default"


class Base(PartitionModel, sa_orm.DeclarativeBase):
    pass


db = PartitionDB(model_class=Base)


class Order(Base):
    __shard_key__ = "customer_id"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    customer_id: sa_orm.Mapped[int]
    amount: sa_orm.Mapped[int]


def make_app(name: str, pg: PostgresTopology, mode: str) -> Flask:
    """An app on the topology's primary and both shard servers."""
    assert pg.primary is not None
    app = Flask(name)
    app.config.update(
        PARTITION_DATABASE_URI=pg.primary.url("app"),
        PARTITION_SHARDS={shard: s.config("app") for shard, s in pg.shards.items()},
        PARTITION_COMMIT_MODE=mode,
    )
    db.init_app(app)
    return app


def customers(app: Flask, count: int) -> dict[str, list[int]]:
    """``count`` customer ids per shard, in the order of the keys."""
    return keys_by_shard(db.get_router(app).shard_map, SHARDS, count)


@dataclasses.dataclass
class Side:
    name: str
    app: Flask
    #: One customer per shard written, in shard order.
    keys: dict[str, int]
    #: Units of work committed so far.
    commits: int = 0
    #: Mean wall seconds per commit of each round.
    times: list[float] = dataclasses.field(default_factory=list)
    #: Mean CPU seconds per commit of each round (this thread's).
    cpu: list[float] = dataclasses.field(default_factory=list)


def unit_of_work(side: Side, ids: t.Iterator[int]) -> None:
    """Write one row per shard of the side and commit, in a new app context
    as a request would.
    """
    with side.app.app_context():
        for key in side.keys.values():
            db.session.add(Order(id=next(ids), customer_id=key, amount=1))
        db.session.commit()
    side.commits += 1


def timed(side: Side, commits: int, ids: t.Iterator[int]) -> tuple[float, float]:
    """Run ``commits`` units of work; return the mean wall and CPU seconds
    per commit.
    """
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(commits):
        unit_of_work(side, ids)
    cpu = time.thread_time() - cpu
    return (time.perf_counter() - start) / commits, cpu / commits


def run_rounds(
    sides: list[Side], rounds: int, commits: int, ids: t.Iterator[int]
) -> None:
    """Time the sides in alternating rounds; append each round's times to
    the side's ``times`` and ``cpu``.
    """

    def run(side: Side, index: int) -> None:
        wall, cpu = timed(side, commits, ids)
        side.times.append(wall)
        side.cpu.append(cpu)

    alternate(sides, rounds, run)


def classify(sql: str) -> str:
    """Name a statement for the per-commit counts."""
    words = sql.split()
    verb = words[0].upper() if words else "?"
    if commit_log.name in sql:
        return f"{verb} {commit_log.name}"
    return verb


def record_events(side: Side, commits: int, ids: t.Iterator[int]) -> dict[str, float]:
    """Run ``commits`` units of work with listeners on every primary of the
    side's app; return what each cluster saw, per commit. Untimed.
    """
    router = db.get_router(side.app)
    seen: collections.Counter[str] = collections.Counter()
    listeners: list[tuple[sa.Engine, str, t.Callable[..., None]]] = []
    for name, cluster in router.by_name.items():
        label = name or DEFAULT

        def on_sql(
            conn: t.Any, cursor: t.Any, sql: str, *args: t.Any, label: str = label
        ) -> None:
            seen[f"{label}: {classify(sql)}"] += 1

        listeners.append((cluster.primary, "before_cursor_execute", on_sql))
        for event, what in (
            ("commit", "COMMIT"),
            ("prepare_twophase", "PREPARE TRANSACTION"),
            ("commit_twophase", "COMMIT PREPARED"),
            ("rollback", "ROLLBACK"),
            ("rollback_twophase", "ROLLBACK PREPARED"),
        ):

            def on_event(*args: t.Any, key: str = f"{label}: {what}") -> None:
                seen[key] += 1

            listeners.append((cluster.primary, event, on_event))
    for engine, event, listener in listeners:
        sa.event.listen(engine, event, listener)
    try:
        for _ in range(commits):
            unit_of_work(side, ids)
    finally:
        for engine, event, listener in listeners:
            sa.event.remove(engine, event, listener)
    return {key: count / commits for key, count in sorted(seen.items())}


def check_events(side: Side, events: dict[str, float]) -> None:
    """Fail unless the side's commits ran the protocol of its mode."""
    problems: list[str] = []

    def want(key: str, count: float) -> None:
        if events.get(key, 0) != count:
            problems.append(f"{key} x{events.get(key, 0):g}, expected x{count:g}")

    two_phase = side.name.startswith("two_phase")
    for shard in side.keys:
        want(f"{shard}: INSERT", 1)
        if len(side.keys) > 1:
            want(f"{shard}: PREPARE TRANSACTION", 1 if two_phase else 0)
            want(f"{shard}: COMMIT PREPARED", 1 if two_phase else 0)
            want(f"{shard}: COMMIT", 0 if two_phase else 1)
    for shard in SHARDS:
        if shard not in side.keys:
            problems += [key for key in events if key.startswith(f"{shard}:")]
    record = len(side.keys) > 1 and two_phase
    want(f"{DEFAULT}: INSERT {commit_log.name}", 1 if record else 0)
    want(f"{DEFAULT}: DELETE {commit_log.name}", 1 if record else 0)
    if problems:
        raise AssertionError(
            f"side {side.name}: per commit {events!r}; wrong: {'; '.join(problems)}"
        )


def check_database(pg: PostgresTopology, sides: list[Side]) -> None:
    """Fail unless every side's rows are where it wrote them and nothing is
    left prepared or recorded. Read from new connections.
    """
    assert pg.primary is not None
    expected: dict[str, dict[int, int]] = {name: {} for name in SHARDS}
    for side in sides:
        for shard, key in side.keys.items():
            expected[shard][key] = side.commits
    for name, servers in pg.shards.items():
        rows = servers.primary.query(
            'SELECT customer_id, count(*) FROM "order" GROUP BY customer_id',
            database="app",
        )
        found = {key: count for key, count in rows}
        if found != expected[name]:
            raise AssertionError(
                f"shard {name!r} holds rows per customer {found!r}, expected"
                f" {expected[name]!r}"
            )
    for node in [pg.primary, *(servers.primary for servers in pg.shards.values())]:
        prepared = node.query("SELECT database, gid FROM pg_prepared_xacts")
        if prepared:
            raise AssertionError(f"{node.name}: prepared transactions left: {prepared}")
    left = pg.primary.query(f"SELECT gtrid FROM {commit_log.name}", database="app")
    if left:
        raise AssertionError(f"{commit_log.name} is not empty: {left}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="timed rounds per side (400)")
    parser.add_argument("--commits", type=int, default=4, help="per side and round")
    parser.add_argument(
        "--warmup", type=int, default=100, help="untimed commits per side"
    )
    parser.add_argument(
        "--recorded", type=int, default=20, help="untimed commits per side, counted"
    )
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--check", action="store_true", help=f"fail above {LIMIT}")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 100 if args.quick else 400
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if postgres_missing("bench/twophase.py"):
        return 2
    ids = itertools.count(1)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(
            PostgresTopology(
                replicas=0, databases=("app",), shards={name: 0 for name in SHARDS}
            )
        )
        print(
            f"PostgreSQL: primary + {len(pg.shards)} shard servers started"
            f" in {time.perf_counter() - started:.1f} s"
        )
        apps: dict[str, Flask] = {}
        for mode in ("best_effort", "two_phase"):
            apps[mode] = make_app(f"bench-{mode}", pg, mode)
            stack.callback(dispose, db.get_router(apps[mode]))
        with apps["best_effort"].app_context():
            db.create_all()
        keys = customers(apps["best_effort"], 4)
        sides = [
            Side("best_effort", apps["best_effort"], {s: keys[s][0] for s in SHARDS}),
            Side("two_phase", apps["two_phase"], {s: keys[s][1] for s in SHARDS}),
            Side("two_phase 1 shard", apps["two_phase"], {"s1": keys["s1"][2]}),
            Side("best_effort 1 shard", apps["best_effort"], {"s1": keys["s1"][3]}),
        ]

        # Warm-up: pools, statement caches, the two-phase check.
        for side in sides + sides[::-1]:
            timed(side, args.warmup // 2 or 1, ids)
        run_rounds(sides, args.rounds, args.commits, ids)
        # Last: an engine that had a listener once stays slower for good.
        events = {side.name: record_events(side, args.recorded, ids) for side in sides}
        for side in sides:
            check_events(side, events[side.name])
        check_database(pg, sides)

    print(
        f"{args.rounds} rounds of {args.commits} commits per side"
        f" ({args.rounds * args.commits} per side), each in a new app context"
    )
    print(f"{'side':<20} {'median us':>10} {'min us':>8} {'cpu us':>8}")
    by_name = {side.name: side for side in sides}
    for side in sides:
        print(
            f"{side.name:<20} {statistics.median(side.times) * 1e6:>10.1f}"
            f" {min(side.times) * 1e6:>8.1f}"
            f" {statistics.median(side.cpu) * 1e6:>8.1f}"
        )
    for side in sides:
        counts = ", ".join(f"{k} x{n:g}" for k, n in events[side.name].items())
        print(f"per commit, side {side.name}: {counts}")
    print(
        f"rows checked on {', '.join(SHARDS)}; no prepared transaction on"
        f" {1 + len(SHARDS)} servers; {commit_log.name} empty"
    )
    ratios: dict[str, float] = {}
    for label, name, baseline in (
        ("two_phase/best_effort", "two_phase", "best_effort"),
        ("1 shard", "two_phase 1 shard", "best_effort 1 shard"),
    ):
        a, b = by_name[name], by_name[baseline]
        print(
            f"{name} minus {baseline}, same round:"
            f" {paired(a.times, b.times, operator.sub) * 1e6:.1f} us wall,"
            f" {paired(a.cpu, b.cpu, operator.sub) * 1e6:.1f} us CPU per commit;"
            " ratio of the medians"
            f" {statistics.median(a.times) / statistics.median(b.times):.3f},"
            f" CPU ratio {paired(a.cpu, b.cpu, operator.truediv):.3f}"
        )
        ratios[label] = paired(a.times, b.times, operator.truediv)
    print(f"ratio 1 shard: {ratios['1 shard']:.3f}")
    ratio = ratios["two_phase/best_effort"]
    print(f"ratio two_phase/best_effort: {ratio:.3f} (--check fails above {LIMIT:.1f})")
    return 1 if args.check and ratio > LIMIT else 0


if __name__ == "__main__":
    sys.exit(main())
