"""Measure what Flask-Partition's routing costs over plain SQLAlchemy.

Both sides run the same workload on their own SQLite file (same schema, same
``--rows`` seeded rows, same temporary folder):

* reads: ``session.get(Model, pk)`` on distinct existing primary keys, with a
  fresh session every ``--batch`` gets so the identity map never answers;
* writes: commits of ``--rows-per-commit`` new rows each.

Side ``plain`` uses ``sqlalchemy.orm.Session(engine)``. Side ``partition``
uses ``db.session`` of a ``PartitionDB`` whose replica is the same file opened
read-only, in a new ``app.app_context()`` per batch and per commit as a
request would: its cost includes the app context, the scoped-session lookup
and ``get_bind``.

Rounds are short: per side, ``--batches`` batches of reads (2 x 50 gets by
default, the 100 gets per commit of the long rounds this benchmark used to
run) then ``--commits`` commits (1), about 12 ms per side. Both sides run each round
back to back, on the same keys, after an untimed warm-up, the order of the
sides alternating; the garbage collector runs only between rounds (its
youngest generation, which holds the sessions' reference cycles). The keys
walk a shuffled list of all rows, so within a session they are distinct.

On a shared machine a load change lasting a few hundred milliseconds slowed
one side of a long round and not the other: the ratio of whole-run totals
swung from 0.81 to 1.25. Here each ratio is the median over rounds of side
partition's time over side plain's in the same round (the two ran a few
milliseconds apart, under the same load): ``reads ratio`` per get,
``writes ratio`` per commit, and ``ratio partition/plain`` for the round's
reads and writes together. The ratio of the two sides' median round times is
printed too, and the ratio of CPU time (this thread's, which the machine's
other work barely changes), with the median microseconds per get and per
commit of each side and what side partition adds to them.

A last, untimed pass counts the replica's SELECTs: every get of side
partition must have read it. ``ratio partition/plain`` at 1.000 means no
overhead, 1.10 means Flask-Partition adds 10 %; ``--check`` exits with
status 1 when it is above 1.10.
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
import random
import statistics
import sys
import tempfile
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import Flask

from flask_partition import PartitionDB
from flask_partition import PartitionModel
from support import alternate
from support import paired
from support import positive

TARGET = 1.10


class PlainBase(sa_orm.DeclarativeBase):
    pass


class PartitionBase(PartitionModel, sa_orm.DeclarativeBase):
    pass


db = PartitionDB(model_class=PartitionBase)


class ItemColumns:
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    value: sa_orm.Mapped[int] = sa_orm.mapped_column()


class PlainItem(ItemColumns, PlainBase):
    __tablename__ = "item"


class PartitionItem(ItemColumns, PartitionBase):
    __tablename__ = "item"


Row = dict[str, t.Any]


@dataclasses.dataclass(frozen=True)
class Workload:
    #: Every seeded primary key, shuffled; rounds read it in turn.
    keys: list[int]
    batch: int
    batches: int
    commits: int
    #: The rows of one commit.
    rows: list[Row]

    @property
    def gets(self) -> int:
        """Gets per side and round."""
        return self.batch * self.batches

    def round_batches(self, index: int) -> list[list[int]]:
        """The key batches of round ``index``, the next ones in ``keys``.

        Any ``batch`` consecutive keys of the cycle are distinct, as long
        as there are at least ``batch`` rows.
        """
        start = index * self.gets
        keys = [self.keys[(start + i) % len(self.keys)] for i in range(self.gets)]
        return [keys[i : i + self.batch] for i in range(0, self.gets, self.batch)]


def read_plain(engine: sa.Engine, batch: list[int]) -> None:
    with sa_orm.Session(engine) as session:
        for pk in batch:
            assert session.get(PlainItem, pk) is not None


def write_plain(engine: sa.Engine, rows: list[Row]) -> None:
    with sa_orm.Session(engine) as session:
        session.add_all([PlainItem(**row) for row in rows])
        session.commit()


def read_partition(app: Flask, batch: list[int]) -> None:
    with app.app_context():
        for pk in batch:
            assert db.session.get(PartitionItem, pk) is not None


def write_partition(app: Flask, rows: list[Row]) -> None:
    with app.app_context():
        db.session.add_all([PartitionItem(**row) for row in rows])
        db.session.commit()


@dataclasses.dataclass
class Times:
    """Per round: wall seconds per get, per commit and for the whole round;
    the same in CPU seconds (this thread's).
    """

    get: list[float] = dataclasses.field(default_factory=list)
    commit: list[float] = dataclasses.field(default_factory=list)
    total: list[float] = dataclasses.field(default_factory=list)
    get_cpu: list[float] = dataclasses.field(default_factory=list)
    commit_cpu: list[float] = dataclasses.field(default_factory=list)
    total_cpu: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Side:
    name: str
    #: Gets one batch of keys in a new session.
    read: t.Callable[[list[int]], None]
    #: Commits one list of new rows in a new session.
    write: t.Callable[[list[Row]], None]
    times: Times = dataclasses.field(default_factory=Times)


def timed(side: Side, batches: list[list[int]], work: Workload) -> None:
    """Run one round of side ``side``; append its times."""
    read, write, rows = side.read, side.write, work.rows
    wall, cpu = time.perf_counter(), time.thread_time()
    for batch in batches:
        read(batch)
    wall_middle, cpu_middle = time.perf_counter(), time.thread_time()
    for _ in range(work.commits):
        write(rows)
    wall_end, cpu_end = time.perf_counter(), time.thread_time()
    times = side.times
    times.get.append((wall_middle - wall) / work.gets)
    times.commit.append((wall_end - wall_middle) / work.commits)
    times.total.append(wall_end - wall)
    times.get_cpu.append((cpu_middle - cpu) / work.gets)
    times.commit_cpu.append((cpu_end - cpu_middle) / work.commits)
    times.total_cpu.append(cpu_end - cpu)


def run_rounds(sides: list[Side], work: Workload, rounds: int, first: int) -> None:
    """Time ``rounds`` rounds, from round index ``first``, the sides in turn
    and their order alternating.
    """
    alternate(
        sides,
        rounds,
        lambda side, index: timed(side, work.round_batches(first + index), work),
    )


def seed(engine: sa.Engine, table: sa.Table, count: int) -> None:
    rows = [{"id": i, "name": f"item {i}", "value": i} for i in range(1, count + 1)]
    with engine.begin() as connection:
        connection.execute(table.insert(), rows)


def count_selects(engine: sa.Engine, run: t.Callable[[], object]) -> int:
    """Run ``run`` and return how many SELECTs ``engine`` executed."""
    seen = [0]

    def listener(conn: sa.Connection, cursor: t.Any, statement: str, *_: t.Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen[0] += 1

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        run()
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    return seen[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=positive, help="timed rounds per side (1000)")
    parser.add_argument("--batch", type=positive, default=50, help="gets per session")
    parser.add_argument(
        "--batches",
        type=positive,
        default=2,
        help="sessions of gets per side and round",
    )
    parser.add_argument(
        "--commits", type=positive, default=1, help="commits per side and round"
    )
    parser.add_argument("--rows-per-commit", type=positive, default=10)
    parser.add_argument("--rows", type=positive, default=5000, help="seeded rows")
    parser.add_argument(
        "--warmup", type=positive, default=20, help="untimed rounds per side"
    )
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--check", action="store_true", help=f"fail above {TARGET}")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 200 if args.quick else 1000
    if args.rows < args.batch:
        parser.error(
            f"--rows ({args.rows}) must be at least --batch ({args.batch}):"
            " the keys of a session must be distinct"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = list(range(1, args.rows + 1))
    random.Random(0).shuffle(keys)
    rows = [{"name": f"new {i}", "value": i} for i in range(args.rows_per_commit)]
    work = Workload(keys, args.batch, args.batches, args.commits, rows)
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as folder:
        engine = sa.create_engine(f"sqlite:///{folder}/plain.db")
        PlainBase.metadata.create_all(engine)
        seed(engine, PlainBase.metadata.tables["item"], args.rows)

        app = Flask(__name__, instance_path=folder)
        app.config["PARTITION_DATABASE_URI"] = "sqlite:///partition.db"
        app.config["PARTITION_REPLICAS"] = ["sqlite:///partition.db"]
        db.init_app(app)
        with app.app_context():
            db.create_all()
            seed(db.engine, db.metadata.tables["item"], args.rows)
            replica = db.get_router().default.replicas[0]

        plain = Side(
            "plain",
            lambda batch: read_plain(engine, batch),
            lambda rows: write_plain(engine, rows),
        )
        partition = Side(
            "partition",
            lambda batch: read_partition(app, batch),
            lambda rows: write_partition(app, rows),
        )
        # Warm-up: pools, compiled-statement caches, the sides' code paths.
        run_rounds([plain, partition], work, args.warmup, 0)
        plain.times, partition.times = Times(), Times()
        run_rounds([plain, partition], work, args.rounds, args.warmup)

        # Last: an engine that had a listener once stays slower for good.
        def read_pass() -> None:
            for index in range(args.warmup):
                for batch in work.round_batches(index):
                    read_partition(app, batch)

        selects = count_selects(replica, read_pass)
        gets = args.warmup * work.gets
        print(f"replica SELECTs in an untimed pass: {selects} ({gets} gets)")
        if selects != gets:
            raise AssertionError(
                f"side partition read the replica {selects} times for {gets}"
                " gets: every get must read it"
            )
        engine.dispose()
        for partition_engine in db.get_router(app).engines():
            partition_engine.dispose()

    print(
        f"{args.rounds} rounds per side of {args.batches} x {args.batch} gets"
        f" (a new session each) + {args.commits} commit(s) x"
        f" {args.rows_per_commit} rows; {args.rows} rows; sides alternate"
    )
    print(
        f"{'side':<10} {'get us':>7} {'commit us':>10} {'round us':>9}"
        f" {'min round':>10} {'cpu get':>8} {'cpu commit':>11}"
    )
    for side in (plain, partition):
        times = side.times
        print(
            f"{side.name:<10} {statistics.median(times.get) * 1e6:>7.1f}"
            f" {statistics.median(times.commit) * 1e6:>10.1f}"
            f" {statistics.median(times.total) * 1e6:>9.1f}"
            f" {min(times.total) * 1e6:>10.1f}"
            f" {statistics.median(times.get_cpu) * 1e6:>8.1f}"
            f" {statistics.median(times.commit_cpu) * 1e6:>11.1f}"
        )
    a, b = partition.times, plain.times
    sub, div = operator.sub, operator.truediv
    print(
        "partition minus plain, same round:"
        f" {paired(a.get, b.get, sub) * 1e6:.1f} us per get and"
        f" {paired(a.commit, b.commit, sub) * 1e6:.1f} us per commit wall,"
        f" {paired(a.get_cpu, b.get_cpu, sub) * 1e6:.1f} us and"
        f" {paired(a.commit_cpu, b.commit_cpu, sub) * 1e6:.1f} us CPU"
    )
    print(
        f"reads ratio: {paired(a.get, b.get, div):.3f},"
        f" writes ratio: {paired(a.commit, b.commit, div):.3f} (same round)"
    )
    medians = statistics.median(a.total) / statistics.median(b.total)
    print(
        f"ratio of the medians: {medians:.3f};"
        f" CPU ratio: {paired(a.total_cpu, b.total_cpu, div):.3f}"
    )
    ratio = paired(a.total, b.total, div)
    print(f"ratio partition/plain: {ratio:.3f} (target <= {TARGET:.2f})")
    return 1 if args.check and ratio > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
