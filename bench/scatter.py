"""Measure how long a read scattered over 4 shards takes next to a one-shard read.

Four independent PostgreSQL servers (``PostgresTopology``) each hold a
quarter of the ``order`` rows. The read counts the orders and first sleeps
``--sleep`` seconds (``pg_sleep`` in an uncorrelated scalar subquery, which
PostgreSQL runs once per query, not once per row), so every shard answers
in about 50 ms and the database time dwarfs Python's.

Four cases, each with a fresh session per read as a request would have:

* ``ours 1 shard``: ``db.session`` in a new ``app.app_context()`` under
  ``use_shard("s1")``, the baseline;
* ``ours 4 shards``: the same read with no shard given, so
  ``PartitionSession`` scatters it over the 4 shards in parallel threads and
  merges the counts;
* ``sqlalchemy 1 shard``: SQLAlchemy's plain
  :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession` with
  ``bind_arguments={"shard_id": "s1"}``;
* ``sqlalchemy 4 shards``: the same session with an ``execute_chooser`` that
  returns the 4 shards; it queries them one after another and concatenates
  the rows, so the 4 counts are summed here.

Every read checks its count. Rounds are interleaved after an untimed warm-up
(pools, scatter threads, statement caches), the order of the cases rotating
each round; each case's time is the median over rounds of its mean read
time. A last, untimed read records when each shard's query ran and on which
thread, to show the 4 queries overlap.

``ours`` is 4-shard over 1-shard time through ``db.session`` (target <= 1.5:
a scatter costs about one shard's read), ``sqlalchemy`` the same ratio for
plain ``ShardedSession`` (about 4). ``--check`` exits with status 1 when
``ours`` is above 1.5. Without PostgreSQL it exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import threading
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import Flask
from sqlalchemy.ext.horizontal_shard import ShardedSession

from flask_partition import PartitionDB
from flask_partition import PartitionModel
from flask_partition import use_shard
from flask_partition.testing import PostgresTopology
from support import postgres_missing

TARGET = 1.5
SHARDS = ("s1", "s2", "s3", "s4")
BASELINE = SHARDS[0]


class Base(PartitionModel, sa_orm.DeclarativeBase):
    pass


db = PartitionDB(model_class=Base)


class Order(Base):
    __shard_key__ = "customer_id"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    customer_id: sa_orm.Mapped[int]
    amount: sa_orm.Mapped[int]


def slow_count(sleep: float) -> sa.Select[int]:
    """``SELECT count(order.id) FROM order WHERE (SELECT pg_sleep(s)) IS NOT
    NULL``: the subquery is uncorrelated, so it is an InitPlan that runs once.
    """
    pause = sa.select(sa.func.pg_sleep(sa.literal(sleep, sa.Float))).scalar_subquery()
    return sa.select(sa.func.count(Order.id)).where(pause.is_not(None))


Read = t.Callable[[], int]


def ours_single(app: Flask, statement: sa.Select[int]) -> Read:
    def read() -> int:
        with app.app_context(), use_shard(BASELINE):
            return db.session.execute(statement).scalar_one()

    return read


def ours_scatter(app: Flask, statement: sa.Select[int]) -> Read:
    def read() -> int:
        with app.app_context():
            return db.session.execute(statement).scalar_one()

    return read


def plain_session(engines: dict[str, sa.Engine]) -> t.Callable[[], ShardedSession]:
    names = list(engines)

    def shard_chooser(
        mapper: sa_orm.Mapper[t.Any] | None,
        instance: t.Any,
        clause: sa.ClauseElement | None = None,
    ) -> str:
        raise AssertionError("the benchmark does not write through ShardedSession")

    def identity_chooser(
        mapper: sa_orm.Mapper[t.Any], primary_key: t.Any, **kw: t.Any
    ) -> list[str]:
        return names

    def execute_chooser(orm_context: sa_orm.ORMExecuteState) -> list[str]:
        return names

    def factory() -> ShardedSession:
        return ShardedSession(
            shard_chooser=shard_chooser,
            identity_chooser=identity_chooser,
            execute_chooser=execute_chooser,
            shards=dict(engines),
        )

    return factory


def plain_single(
    factory: t.Callable[[], ShardedSession], statement: sa.Select[int]
) -> Read:
    def read() -> int:
        with factory() as session:
            result = session.execute(statement, bind_arguments={"shard_id": BASELINE})
            return result.scalar_one()

    return read


def plain_scatter(
    factory: t.Callable[[], ShardedSession], statement: sa.Select[int]
) -> Read:
    def read() -> int:
        with factory() as session:
            # ShardedSession concatenates the shards' rows: one count each.
            return sum(session.execute(statement).scalars().all())

    return read


def seed(app: Flask, rows: int) -> None:
    """Insert ``rows`` orders with customer ids 1..rows through the unit of
    work; the shard map spreads them over the shards. (An ORM bulk
    ``session.execute(insert(Order), rows)`` raises NotImplementedError:
    ShardedSession's ``connection_callable`` rules out ORM bulk inserts.)
    """
    orders = [Order(id=i, customer_id=i, amount=i % 100) for i in range(1, rows + 1)]
    with app.app_context():
        db.create_all()
        db.session.add_all(orders)
        db.session.commit()


def shard_counts(engines: dict[str, sa.Engine]) -> dict[str, int]:
    """The rows on each shard, counted directly."""
    counts = {}
    for name, engine in engines.items():
        with engine.connect() as connection:
            statement = sa.select(sa.func.count()).select_from(Order.__table__)
            counts[name] = int(connection.execute(statement).scalar_one())
    return counts


def dispose(engines: list[sa.Engine]) -> None:
    for engine in engines:
        engine.dispose()


def timed(read: Read, reads: int, expected: int, label: str) -> float:
    """Run ``read`` ``reads`` times; return the mean seconds per read."""
    start = time.perf_counter()
    for _ in range(reads):
        count = read()
        if count != expected:
            raise AssertionError(f"{label}: counted {count}, expected {expected}")
    return (time.perf_counter() - start) / reads


Span = tuple[str, str, float, float]  # shard, thread, start, end (perf_counter)


def overlap(app: Flask, read: Read) -> list[Span]:
    """Run ``read`` once; return when and where each shard's query ran."""
    router = db.get_router(app)
    engines = {router.shards[name].primary: name for name in SHARDS}
    starts: dict[str, tuple[str, float]] = {}
    spans: list[Span] = []
    lock = threading.Lock()

    def before(conn: sa.Connection, *_: t.Any) -> None:
        with lock:
            starts[engines[conn.engine]] = (
                threading.current_thread().name,
                time.perf_counter(),
            )

    def after(conn: sa.Connection, *_: t.Any) -> None:
        end = time.perf_counter()
        with lock:
            name = engines[conn.engine]
            thread, start = starts.pop(name)
            spans.append((name, thread, start, end))

    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "after_cursor_execute", after)
    try:
        read()
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", before)
            sa.event.remove(engine, "after_cursor_execute", after)
    return sorted(spans)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="timed rounds per case (7)")
    parser.add_argument("--reads", type=int, help="reads per case and round (10)")
    parser.add_argument("--rows", type=int, default=1000, help="orders in all")
    parser.add_argument(
        "--sleep", type=float, default=0.05, help="seconds each shard's read sleeps"
    )
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--check", action="store_true", help=f"fail above {TARGET}")
    args = parser.parse_args(argv)
    defaults = {"rounds": 3, "reads": 5} if args.quick else {}
    for name, default in {"rounds": 7, "reads": 10}.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults.get(name, default))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if postgres_missing("bench/scatter.py"):
        return 2
    statement = slow_count(args.sleep)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(
            PostgresTopology(
                replicas=0, databases=("app",), shards={name: 0 for name in SHARDS}
            )
        )
        assert pg.primary is not None
        print(
            f"PostgreSQL: default cluster + {len(SHARDS)} shard servers started"
            f" in {time.perf_counter() - started:.1f} s"
        )
        app = Flask(__name__)
        app.config["PARTITION_DATABASE_URI"] = pg.primary.url("app")
        app.config["PARTITION_SHARDS"] = {
            name: pg.shards[name].config("app") for name in SHARDS
        }
        db.init_app(app)
        stack.callback(dispose, list(db.get_router(app).engines()))
        stack.callback(db.get_router(app).close)
        seed(app, args.rows)

        engines = {
            name: sa.create_engine(pg.shards[name].primary.url("app"))
            for name in SHARDS
        }
        stack.callback(dispose, list(engines.values()))
        counts = shard_counts(engines)
        total = sum(counts.values())
        if total != args.rows or not all(counts.values()):
            raise AssertionError(
                f"rows per shard {counts}, expected {args.rows} in all"
            )
        print(f"rows per shard: {counts}")

        factory = plain_session(engines)
        cases: dict[str, tuple[Read, int]] = {
            "ours 1 shard": (ours_single(app, statement), counts[BASELINE]),
            "ours 4 shards": (ours_scatter(app, statement), total),
            "sqlalchemy 1 shard": (plain_single(factory, statement), counts[BASELINE]),
            "sqlalchemy 4 shards": (plain_scatter(factory, statement), total),
        }

        # Warm-up: pools of every engine, scatter threads, statement caches.
        # A sleep run once per row instead of once per query would take
        # rows/4 * sleep here.
        for label, (read, expected) in cases.items():
            seconds = timed(read, 2, expected, label)
            if seconds > 4 * args.sleep + 0.5:
                raise AssertionError(
                    f"{label}: a read took {seconds * 1000:.0f} ms; does pg_sleep"
                    " run once per row?"
                )
        single = timed(cases["ours 1 shard"][0], 3, counts[BASELINE], "single")
        if single < args.sleep:
            raise AssertionError(
                f"a one-shard read took {single * 1000:.1f} ms, less than the"
                f" {args.sleep * 1000:.0f} ms pg_sleep: the sleep did not run"
            )

        times: dict[str, list[float]] = {label: [] for label in cases}
        labels = list(cases)
        for index in range(args.rounds):
            shift = index % len(labels)
            for label in labels[shift:] + labels[:shift]:
                gc.collect()
                read, expected = cases[label]
                times[label].append(timed(read, args.reads, expected, label))

        # Last: an engine that had a listener once stays slower for good.
        spans = overlap(app, cases["ours 4 shards"][0])

    print(
        f"{args.rounds} rounds of {args.reads} reads per case; each shard's read"
        f" sleeps {args.sleep * 1000:.0f} ms; {args.rows} rows over"
        f" {len(SHARDS)} shards"
    )
    print(f"{'case':<20} {'median ms':>10} {'min ms':>8} {'max ms':>8}")
    medians: dict[str, float] = {}
    for label, samples in times.items():
        medians[label] = statistics.median(samples)
        print(
            f"{label:<20} {medians[label] * 1000:>10.1f} {min(samples) * 1000:>8.1f}"
            f" {max(samples) * 1000:>8.1f}"
        )
    if spans:
        first = min(start for _, _, start, _ in spans)
        print("one scattered read, each shard's query (ms from the first start):")
        for name, thread, start, end in spans:
            print(
                f"  {name}: {(start - first) * 1000:6.1f} .."
                f" {(end - first) * 1000:6.1f}  on {thread}"
            )
        latest_start = max(start for _, _, start, _ in spans)
        earliest_end = min(end for _, _, _, end in spans)
        together = "all overlap" if latest_start < earliest_end else "NOT overlapping"
        print(
            f"  {len(spans)} queries on {len({s[1] for s in spans})} threads:"
            f" {together}"
        )
    ours = medians["ours 4 shards"] / medians["ours 1 shard"]
    plain = medians["sqlalchemy 4 shards"] / medians["sqlalchemy 1 shard"]
    print(f"ratio sqlalchemy 4/1 shards: {plain:.2f}")
    print(f"ratio ours 4/1 shards: {ours:.2f} (target <= {TARGET:.2f})")
    return 1 if args.check and ours > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
