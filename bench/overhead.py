"""Measure what Flask-Partition's routing costs over plain SQLAlchemy.

Both sides run the same workload on their own SQLite file (same schema, same
seeded rows, same temporary folder):

* reads: ``session.get(Model, pk)`` on distinct existing primary keys, with a
  fresh session every ``--batch`` gets so the identity map never answers;
* writes: commits of ``--rows-per-commit`` new rows each.

Side ``plain`` uses ``sqlalchemy.orm.Session(engine)``. Side ``partition``
uses ``db.session`` of a ``PartitionDB`` whose replica is the same file opened
read-only, in a new ``app.app_context()`` per batch as a request would: its
cost includes the app context, the scoped-session lookup and ``get_bind``.
Rounds are interleaved after an untimed warm-up, so a noisy machine's drift
hits both sides alike; a last, untimed round counts the replica's SELECTs.

``ratio partition/plain`` is the median wall time of side partition over
that of side plain: 1.000 means no overhead, 1.10 means Flask-Partition adds
10 % (the reads and writes ratios show where). ``--check`` exits with status
1 when it is above 1.10.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
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


@dataclasses.dataclass(frozen=True)
class Workload:
    keys: list[int]
    batch: int
    commits: int
    rows_per_commit: int

    def batches(self) -> t.Iterator[list[int]]:
        for start in range(0, len(self.keys), self.batch):
            yield self.keys[start : start + self.batch]

    def rows(self) -> list[dict[str, t.Any]]:
        return [{"name": f"new {i}", "value": i} for i in range(self.rows_per_commit)]


Timing = tuple[float, float]  # seconds spent reading, seconds spent writing


def run_plain(engine: sa.Engine, work: Workload) -> Timing:
    start = time.perf_counter()
    for batch in work.batches():
        with sa_orm.Session(engine) as session:
            for pk in batch:
                assert session.get(PlainItem, pk) is not None
    middle = time.perf_counter()
    for _ in range(work.commits):
        with sa_orm.Session(engine) as session:
            session.add_all([PlainItem(**row) for row in work.rows()])
            session.commit()
    return middle - start, time.perf_counter() - middle


def run_partition(app: Flask, work: Workload) -> Timing:
    start = time.perf_counter()
    for batch in work.batches():
        with app.app_context():
            for pk in batch:
                assert db.session.get(PartitionItem, pk) is not None
    middle = time.perf_counter()
    for _ in range(work.commits):
        with app.app_context():
            db.session.add_all([PartitionItem(**row) for row in work.rows()])
            db.session.commit()
    return middle - start, time.perf_counter() - middle


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
    run()
    sa.event.remove(engine, "before_cursor_execute", listener)
    return seen[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, help="timed rounds per side (7)")
    parser.add_argument("--gets", type=int, help="gets per round (5000)")
    parser.add_argument("--commits", type=int, help="commits per round (50)")
    parser.add_argument("--rows-per-commit", type=int, default=10)
    parser.add_argument("--batch", type=int, default=50, help="gets per session")
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument("--check", action="store_true", help=f"fail above {TARGET}")
    args = parser.parse_args(argv)
    defaults = {"rounds": 3, "gets": 500, "commits": 10} if args.quick else {}
    for name, default in {"rounds": 7, "gets": 5000, "commits": 50}.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults.get(name, default))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keys = list(range(1, args.gets + 1))
    random.Random(0).shuffle(keys)
    work = Workload(keys, args.batch, args.commits, args.rows_per_commit)
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as folder:
        engine = sa.create_engine(f"sqlite:///{folder}/plain.db")
        PlainBase.metadata.create_all(engine)
        seed(engine, PlainBase.metadata.tables["item"], args.gets)

        app = Flask(__name__, instance_path=folder)
        app.config["PARTITION_DATABASE_URI"] = "sqlite:///partition.db"
        app.config["PARTITION_REPLICAS"] = ["sqlite:///partition.db"]
        db.init_app(app)
        with app.app_context():
            db.create_all()
            seed(db.engine, db.metadata.tables["item"], args.gets)
            replica = db.get_router().default.replicas[0]

        run_plain(engine, work)  # warm-up: pools, compiled-statement caches
        run_partition(app, work)
        times: dict[str, list[Timing]] = {"plain": [], "partition": []}
        for _ in range(args.rounds):
            gc.collect()
            times["plain"].append(run_plain(engine, work))
            gc.collect()
            times["partition"].append(run_partition(app, work))

        # Last: an engine that had a listener once stays slower for good.
        selects = count_selects(replica, lambda: run_partition(app, work))
        print(f"replica SELECTs in an untimed round: {selects} ({args.gets} gets)")
        if args.gets and not selects:
            raise AssertionError("side partition did not read from the replica")
        engine.dispose()
        for partition_engine in db.get_router(app).engines():
            partition_engine.dispose()

    print(
        f"{args.rounds} rounds of {args.gets} gets (new session every"
        f" {args.batch}) + {args.commits} commits x {args.rows_per_commit} rows"
    )
    print(f"{'side':<10} {'median s':>9} {'min s':>8} {'reads s':>8} {'writes s':>9}")
    medians: dict[str, tuple[float, float, float]] = {}
    for side, timings in times.items():
        totals = [r + w for r, w in timings]
        reads = statistics.median(r for r, _ in timings)
        writes = statistics.median(w for _, w in timings)
        medians[side] = (statistics.median(totals), reads, writes)
        print(
            f"{side:<10} {medians[side][0]:>9.4f} {min(totals):>8.4f}"
            f" {reads:>8.4f} {writes:>9.4f}"
        )
    pairs = zip(medians["plain"], medians["partition"], strict=True)
    ratios = [b / a if a else float("nan") for a, b in pairs]
    print(f"reads ratio: {ratios[1]:.3f}, writes ratio: {ratios[2]:.3f}")
    print(f"ratio partition/plain: {ratios[0]:.3f} (target <= {TARGET:.2f})")
    return 1 if args.check and ratios[0] > TARGET else 0


if __name__ == "__main__":
    sys.exit(main())
