"""Measure what a request costs a user of Flask-Partition, against a plain
scoped session and against Flask-SQLAlchemy.

Three Flask apps share the view code (``GET /items/<id>``: one
``session.get(Item, id)``, answered as a two-key JSON object) and one
database holding ``--rows`` items, each through its own engines:

* side ``plain``: a ``sqlalchemy.orm.scoped_session`` scoped to the app
  context, removed in ``teardown_appcontext``, as Flask-SQLAlchemy does it;
* side ``fsa``: ``db.session`` of Flask-SQLAlchemy's ``SQLAlchemy``;
* side ``partition``: ``db.session`` of a ``PartitionDB`` with its default
  config and one replica (on SQLite the same file opened read-only).

Every app has the same ``SECRET_KEY``, so consistency tokens are on
wherever the database takes them (``"auto"``: PostgreSQL; a SQLite
replica cannot lag, so there they stay off). It is set on sides plain and
fsa too: with a secret key, Flask opens its cookie session on every
request, building a signing serializer each time, which costs about as
much as everything Flask-Partition adds; that is the app's cost, not the
extension's.

The database is a SQLite file, or with ``--postgres`` a PostgreSQL primary
and one streaming replica (``PostgresTopology``), which sides plain and fsa
read from the primary. Each request goes through ``app.test_client()``, so
its cost includes routing the URL, the app and request contexts, every hook
an extension installs, the session's creation and removal and the JSON
response: what a user pays, not only ``session.get``.

Rounds are short (``--requests`` 10 GETs per side, a few milliseconds) and
interleaved after an untimed warm-up, the order of the sides reversed every
round. The garbage collector is off while the requests run, and each
side's turn ends with a collection of the youngest generation, timed: a
request whose objects form reference cycles is only freed by the
collector, and what a side's requests leave it to free is part of their
cost (freeing the others happens inside the requests). In a round all
sides read the same keys, the next ones of a shuffled list of every row, so
each request of a round reads another row. Each side's time is its mean
per request over a round; the side's figure is the median over rounds.

A request costs a few hundred microseconds and the targets are a few per
cent of that, less than a shared machine's load changes it from one second
to the next. So ``ratio partition/plain`` and ``ratio partition/fsa`` are
medians over rounds of the ratio of the two sides' times in the same round
(they ran a few milliseconds apart, under the same load). The ratios of
the medians are printed too, the same-round ratios of CPU time (this
thread's, which the machine's other work barely changes), and what side
partition adds per request in wall and CPU microseconds.

A last, untimed pass (event listeners slow an engine for good) sends the
warm-up's requests again with a ``before_cursor_execute`` listener on
every engine: each answer must be its row, sides plain and fsa must run
one SELECT per request, and side partition one per request on the replica
and none on the primary.

``--check`` exits with status 1 when ``ratio partition/plain`` is above
1.05 or ``ratio partition/fsa`` above 1.03. With ``--postgres`` and no
PostgreSQL it exits with status 2.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import gc
import operator
import os
import random
import statistics
import sys
import tempfile
import time
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import abort
from flask import Flask
from flask.globals import app_ctx
from flask.testing import FlaskClient
from flask_sqlalchemy import SQLAlchemy

from flask_partition import PartitionDB
from flask_partition import PartitionModel
from flask_partition.testing import PostgresTopology
from support import alternate
from support import dispose
from support import paired
from support import positive
from support import postgres_missing

TARGET_PLAIN = 1.05
TARGET_FSA = 1.03


class ItemColumns:
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(sa.String(50))
    value: sa_orm.Mapped[int] = sa_orm.mapped_column()


class PlainBase(sa_orm.DeclarativeBase):
    pass


class PlainItem(ItemColumns, PlainBase):
    __tablename__ = "item"


class FsaBase(sa_orm.DeclarativeBase):
    pass


# Flask-SQLAlchemy 3.1 makes a DeclarativeBase model_class its db.Model
# itself, so FsaItem(FsaBase) is a db.Model subclass that mypy can check.
fsa = SQLAlchemy(model_class=FsaBase)


class FsaItem(ItemColumns, FsaBase):
    __tablename__ = "item"


class PartitionBase(PartitionModel, sa_orm.DeclarativeBase):
    pass


db = PartitionDB(model_class=PartitionBase)


class PartitionItem(ItemColumns, PartitionBase):
    __tablename__ = "item"


def _app_ctx_id() -> int:
    """Scope side plain's sessions to the app context, as Flask-SQLAlchemy
    and Flask-Partition do.
    """
    return id(app_ctx._get_current_object())  # type: ignore[attr-defined]


def add_view(
    app: Flask,
    session: sa_orm.scoped_session[t.Any],
    model: type[ItemColumns],
) -> None:
    """The view every side runs, with its own session and model."""

    @app.get("/items/<int:item_id>")
    def read_item(item_id: int) -> dict[str, t.Any]:
        item = session.get(model, item_id)
        if item is None:
            abort(404)
        return {"id": item.id, "name": item.name}


def new_app(name: str) -> Flask:
    """An app with the config every side has."""
    app = Flask(name)
    app.config["SECRET_KEY"] = "bench secret"
    return app


@dataclasses.dataclass
class Side:
    name: str
    app: Flask
    client: FlaskClient
    #: The scoped session and the model its view reads.
    session: sa_orm.scoped_session[t.Any]
    model: type[ItemColumns]
    #: The side's engines; for side partition the primary, then the replica.
    engines: list[sa.Engine]
    #: Mean wall seconds per request of each round.
    times: list[float] = dataclasses.field(default_factory=list)
    #: Mean CPU seconds per request of each round (this thread's).
    cpu: list[float] = dataclasses.field(default_factory=list)


def make_side(
    name: str,
    app: Flask,
    session: sa_orm.scoped_session[t.Any],
    model: type[ItemColumns],
    engines: list[sa.Engine],
) -> Side:
    add_view(app, session, model)
    return Side(name, app, app.test_client(), session, model, engines)


def make_plain(url: str) -> Side:
    app = new_app("bench-plain")
    engine = sa.create_engine(url)
    session = sa_orm.scoped_session(
        sa_orm.sessionmaker(bind=engine), scopefunc=_app_ctx_id
    )

    @app.teardown_appcontext
    def remove_session(exc: BaseException | None) -> None:
        session.remove()

    return make_side("plain", app, session, PlainItem, [engine])


def make_fsa(url: str) -> Side:
    app = new_app("bench-fsa")
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    fsa.init_app(app)
    with app.app_context():
        engine = fsa.engine
    return make_side("fsa", app, fsa.session, FsaItem, [engine])


def make_partition(
    url: str, replica: str, name: str = "partition", **config: t.Any
) -> Side:
    """Side partition; ``config`` adds to its app's config."""
    app = new_app(f"bench-{name}")
    app.config.update(
        PARTITION_DATABASE_URI=url, PARTITION_REPLICAS=[replica], **config
    )
    db.init_app(app)
    cluster = db.get_router(app).default
    engines = [cluster.primary, *cluster.replicas]
    return make_side(name, app, db.session, PartitionItem, engines)


def timed(side: Side, paths: list[str]) -> tuple[float, float]:
    """Send a GET for each path, then collect the garbage they left in
    cycles; return the mean wall and CPU seconds per request.
    """
    client = side.client
    start, cpu = time.perf_counter(), time.thread_time()
    for path in paths:
        response = client.get(path)
        if response.status_code != 200:
            raise AssertionError(
                f"side {side.name}: GET {path} answered {response.status_code}"
            )
    gc.collect(0)
    cpu = time.thread_time() - cpu
    return (time.perf_counter() - start) / len(paths), cpu / len(paths)


def round_paths(keys: list[int], requests: int, index: int) -> list[str]:
    """The paths of round ``index``: the next ``requests`` keys of ``keys``."""
    start = index * requests
    return [f"/items/{keys[(start + i) % len(keys)]}" for i in range(requests)]


def run_rounds(
    sides: list[Side], rounds: int, first: int, keys: list[int], requests: int
) -> None:
    """Time ``rounds`` rounds from round index ``first``, the sides in turn
    and their order alternating; append to each side's ``times`` and ``cpu``.
    """

    def run(side: Side, index: int) -> None:
        wall, cpu = timed(side, round_paths(keys, requests, first + index))
        side.times.append(wall)
        side.cpu.append(cpu)

    alternate(sides, rounds, run)


def seed(url: str, rows: int) -> None:
    engine = sa.create_engine(url)
    PlainBase.metadata.create_all(engine)
    items = [{"id": i, "name": f"item {i}", "value": i} for i in range(1, rows + 1)]
    with engine.begin() as connection:
        connection.execute(PlainBase.metadata.tables["item"].insert(), items)
    engine.dispose()


def count_selects(side: Side, paths: list[str]) -> list[int]:
    """Send the requests with a listener on each of the side's engines;
    check every answer; return the SELECTs of each engine.
    """
    seen: collections.Counter[sa.Engine] = collections.Counter()

    def listener(conn: sa.Connection, cursor: t.Any, statement: str, *_: t.Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen[conn.engine] += 1

    with contextlib.ExitStack() as stack:
        for engine in side.engines:
            sa.event.listen(engine, "before_cursor_execute", listener)
            stack.callback(sa.event.remove, engine, "before_cursor_execute", listener)
        for path in paths:
            response = side.client.get(path)
            key = int(path.rsplit("/", 1)[1])
            if response.json != {"id": key, "name": f"item {key}"}:
                raise AssertionError(
                    f"side {side.name}: GET {path} answered"
                    f" {response.status_code} {response.json!r}"
                )
    return [seen[engine] for engine in side.engines]


def check_selects(sides: dict[str, Side], paths: list[str]) -> str:
    """Run :func:`count_selects` on every side; fail unless sides plain and
    fsa read once per request, and side partition once per request from
    its replica only. Return a summary line.
    """
    expected = {
        "plain": [len(paths)],
        "fsa": [len(paths)],
        "partition": [0, len(paths)],
    }
    found = {name: count_selects(side, paths) for name, side in sides.items()}
    if found != expected:
        raise AssertionError(
            f"SELECTs per engine for {len(paths)} requests: {found}; expected"
            f" {expected} (side partition: primary, then replica)"
        )
    return (
        f"untimed pass of {len(paths)} requests per side, every answer its row;"
        f" SELECTs: plain {found['plain'][0]}, fsa {found['fsa'][0]}, partition"
        f" primary {found['partition'][0]} and replica {found['partition'][1]}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=positive, help="timed rounds per side (1000)")
    parser.add_argument(
        "--requests", type=positive, default=10, help="GETs per side and round"
    )
    parser.add_argument("--rows", type=positive, default=1000, help="seeded rows")
    parser.add_argument(
        "--warmup", type=positive, default=20, help="untimed rounds per side"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="PostgreSQL instead of SQLite"
    )
    parser.add_argument("--quick", action="store_true", help="small run for CI")
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"fail above {TARGET_PLAIN} (plain) or {TARGET_FSA} (fsa)",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 200 if args.quick else 1000
    return args


def make_sides(url: str, replica: str) -> dict[str, Side]:
    """Sides plain and fsa on ``url``; side partition with ``replica``."""
    sides = [make_plain(url), make_fsa(url), make_partition(url, replica)]
    return {side.name: side for side in sides}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.postgres and postgres_missing("bench/requests.py"):
        return 2
    keys = list(range(1, args.rows + 1))
    random.Random(0).shuffle(keys)
    with contextlib.ExitStack() as stack:
        if args.postgres:
            started = time.perf_counter()
            pg = stack.enter_context(PostgresTopology(replicas=1, databases=("app",)))
            assert pg.primary is not None
            url, replica = pg.primary.url("app"), pg.replicas[0].url("app")
            seed(url, args.rows)
            pg.wait_for_replay()
            database = "PostgreSQL primary + 1 streaming replica"
            print(f"{database} started in {time.perf_counter() - started:.1f} s")
        else:
            folder = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="partition-bench-")
            )
            url = replica = f"sqlite:///{os.path.join(folder, 'items.db')}"
            seed(url, args.rows)
            database = "SQLite, the replica the same file read-only"
        sides = make_sides(url, replica)
        stack.callback(dispose, db.get_router(sides["partition"].app))
        for side in sides.values():
            for engine in side.engines:
                stack.callback(engine.dispose)

        # Warm-up: pools, compiled-statement caches, the sides' code paths.
        run_rounds(list(sides.values()), args.warmup, 0, keys, args.requests)
        for side in sides.values():
            side.times, side.cpu = [], []
        run_rounds(list(sides.values()), args.rounds, args.warmup, keys, args.requests)

        # Last: an engine that had a listener once stays slower for good.
        untimed = [
            path
            for index in range(args.warmup)
            for path in round_paths(keys, args.requests, index)
        ]
        selects = check_selects(sides, untimed)

    print(
        f"{args.rounds} rounds of {args.requests} GETs per side"
        f" ({args.rounds * args.requests} per side), sides alternating;"
        f" {args.rows} rows; {database}"
    )
    print(selects)
    print(f"{'side':<10} {'median us':>10} {'min us':>8} {'cpu us':>8}")
    for name, side in sides.items():
        print(
            f"{name:<10} {statistics.median(side.times) * 1e6:>10.1f}"
            f" {min(side.times) * 1e6:>8.1f}"
            f" {statistics.median(side.cpu) * 1e6:>8.1f}"
        )
    partition = sides["partition"]
    sub, div = operator.sub, operator.truediv
    ratios: dict[str, float] = {}
    for name in ("plain", "fsa"):
        other = sides[name]
        medians = statistics.median(partition.times) / statistics.median(other.times)
        print(
            f"partition minus {name}, same round:"
            f" {paired(partition.times, other.times, sub) * 1e6:.1f} us wall,"
            f" {paired(partition.cpu, other.cpu, sub) * 1e6:.1f} us CPU per"
            f" request; ratio of the medians: {medians:.3f}; CPU ratio:"
            f" {paired(partition.cpu, other.cpu, div):.3f}"
        )
        ratios[name] = paired(partition.times, other.times, div)
    fsa_plain = paired(sides["fsa"].times, sides["plain"].times, div)
    print(f"ratio fsa/plain: {fsa_plain:.3f}")
    print(
        f"ratio partition/plain: {ratios['plain']:.3f} (target <= {TARGET_PLAIN:.2f})"
    )
    print(f"ratio partition/fsa: {ratios['fsa']:.3f} (target <= {TARGET_FSA:.2f})")
    failed = ratios["plain"] > TARGET_PLAIN or ratios["fsa"] > TARGET_FSA
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
