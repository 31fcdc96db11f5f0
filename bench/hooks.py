"""Break down what Flask-Partition adds to a request: each request hook and
each routing step of a ``session.get``.

It builds the three apps of ``bench/requests.py`` (sides plain, fsa and
partition, one SQLite file of ``--rows`` items) and a fourth, side
partition's config with ``PARTITION_CONSISTENCY = "time"``, whose replica
takes consistency tokens, so the token code runs on SQLite too (on
PostgreSQL it is the same code, with LSN positions).

Timed in a loop, a step of a microsecond runs at its best: on a shared
2-core machine a tight loop ran 2 to 3 times more instructions per
microsecond than a whole request, where the step competes with the rest
of the request for the CPU's caches; the loop timings of the hooks and
steps added up to a third of what ``bench/requests.py`` measures. So each
step is measured in CPU instructions, which neither the caches nor the
machine's other work change: the script runs itself under Valgrind's
callgrind, each step in a loop of ``--number`` calls between two marks
(calls of ``os.getppid``, where callgrind writes out its counters), the
garbage collector off and, before the second mark, a collection of the
youngest generation, which frees what the calls left in reference cycles. A
step that keeps state (a session's replica choice) is reset before each
call and the reset, counted alone, is subtracted; so is the loop's own
cost. Whole requests of each side are counted the same way: their ratios
match the time ratios of ``bench/requests.py``. Microseconds are
instructions times the time per instruction of side plain's whole
request, timed in this run (``--rounds`` rounds of bench/requests.py's
method), so a step's microseconds are what it costs inside a request.

Without Valgrind, or with ``--meter time``, the steps are timed instead,
each the fastest of ``--repeat`` loops (as ``timeit`` advises): lower
bounds, far below what the steps cost inside a request.

The tables: whole requests; the request hooks ``PartitionDB.init_app``
registers, each called in a request context as Flask calls it (through
``app.ensure_sync``); the token hooks of the ``"time"`` app, with no token
and with one every replica has passed; the session of one request on each
side (created and removed, as ``teardown_appcontext`` does, and with one
``get`` in between); the routing steps of that get, from
``PartitionSession.get_bind`` with the arguments SQLAlchemy passes
(captured from a real get) down to each step it takes, with
Flask-SQLAlchemy's and SQLAlchemy's ``get_bind`` for scale; the session's
creation, events and overrides besides ``get_bind``.

``--profile N`` also runs N requests per side under :mod:`cProfile` and
prints the Flask-Partition functions by cumulative time per request, and
the functions whose own time differs most between sides partition and
plain (the profiler's own cost per call inflates both).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import glob
import itertools
import operator
import os
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import typing as t

from flask import Flask

import requests as bench
from flask_partition import TOKEN_HEADER
from flask_partition.routing import _plan
from flask_partition.routing import classify
from flask_partition.session import _after_transaction_end
from flask_partition.session import PartitionSession
from flask_partition.transactions import on_transaction_create
from support import paired

Call = t.Callable[[], object]
SIDES = ("plain", "fsa", "partition")
#: What the mark of a loop calls; callgrind writes out its counters there.
MARK = "os_getppid"


class Meter(t.Protocol):
    def __call__(self, key: str, call: Call, reset: Call | None = None) -> None: ...


class TimeMeter:
    """Time each call: the fastest of ``repeat`` loops of ``number`` calls,
    in microseconds, the loop's own cost and the reset's subtracted.
    """

    def __init__(self, number: int, repeat: int) -> None:
        self.number = number
        self.repeat = repeat
        self.values: dict[str, float] = {}
        self._loop = self._best(lambda: None)

    def __call__(self, key: str, call: Call, reset: Call | None = None) -> None:
        spent = self._best(call) - (self._best(reset) if reset else self._loop)
        self.values[key] = spent * 1e6

    def _best(self, call: Call) -> float:
        runs = timeit.Timer(call).repeat(repeat=self.repeat, number=self.number)
        return min(runs) / self.number


class MarkMeter:
    """Run each call in a loop between two marks, for callgrind; record the
    keys in order. Counting happens in :func:`read_counts`.
    """

    def __init__(self, number: int) -> None:
        self.number = number
        self.keys: list[str] = []
        self("loop", lambda: None)

    def __call__(self, key: str, call: Call, reset: Call | None = None) -> None:
        self._marked(key, call)
        if reset is not None:
            self._marked(f"{key} /reset", reset)

    def _marked(self, key: str, call: Call) -> None:
        for _ in range(min(self.number, 200)):
            call()  # warm-up: caches, specialised bytecode
        gc.collect()
        self.keys.append(key)
        os.getppid()
        for _ in range(self.number):
            call()
        gc.collect(0)  # what the calls left in reference cycles: their cost too
        os.getppid()


def read_counts(folder: str, keys: list[str], number: int) -> dict[str, float]:
    """Instructions per call of each key, from the callgrind dumps in
    ``folder``: every mark writes one, so a key's loop is counted in the
    second dump of its pair (the first counts what ran since the last loop).
    """
    dumps = glob.glob(os.path.join(folder, "cg.out.*"))
    dumps.sort(key=lambda path: int(path.rsplit(".", 1)[1]))
    if len(dumps) != 2 * len(keys):
        raise RuntimeError(
            f"callgrind wrote {len(dumps)} dumps for {len(keys)} loops; something"
            f" else called {MARK} (expected {2 * len(keys)})."
        )
    counts: dict[str, float] = {}
    for index, key in enumerate(keys):
        with open(dumps[1 + 2 * index]) as f:
            totals = [line for line in f if line.startswith("totals:")]
        counts[key] = int(totals[0].split()[1]) / number
    loop = counts.pop("loop")
    values: dict[str, float] = {}
    for key, count in counts.items():
        if key.endswith(" /reset"):
            continue
        reset = counts.get(f"{key} /reset")
        values[key] = count - (reset if reset is not None else loop)
    return values


# -- what is measured -------------------------------------------------------


def measure_hooks(meter: Meter, app: Flask) -> None:
    """The request hooks of side partition, each through Flask's dispatch."""
    db = bench.db
    response = app.response_class("x")
    sync = app.ensure_sync
    with app.test_request_context("/items/1"):
        meter("before_request", lambda: sync(db._before_request)())
        meter("after_request", lambda: sync(db._after_request)(response))
        meter("teardown_request", lambda: sync(db._reset_request)(None))
        meter("dispatch", lambda: sync(db._reset_request))
        meter("get_state", db.get_state)


def measure_tokens(meter: Meter, app: Flask) -> None:
    """The token hooks of an app whose replica takes tokens."""
    db = bench.db
    state = db.get_state(app)
    assert state.tokens is not None
    codec = state.tokens
    # A time token older than the window: every replica has passed it.
    old: dict[str | None, float] = {None: time.time() - 60.0}
    token = codec.dumps(old)
    sync = app.ensure_sync
    response = app.response_class("x")

    def hooks() -> None:
        sync(db._before_request)()
        sync(db._after_request)(response)
        sync(db._reset_request)(None)

    with app.test_request_context("/items/1"):
        meter("no token: 3 hooks", hooks)
        meter("no token: _read_token", lambda: db._read_token(state))
    with app.test_request_context("/items/1", headers={TOKEN_HEADER: token}):
        meter("passed token: 3 hooks", hooks)
        meter("passed token: _read_token", lambda: db._read_token(state))
    now = time.time()
    cache = codec._cache

    def verified() -> None:
        cache.clear()
        codec.loads(token, now)

    meter("loads cached", lambda: codec.loads(token, now))
    meter("loads verified", verified, reset=lambda: cache.clear())
    meter("dumps", lambda: codec.dumps(old))


def measure_sessions(
    meter: Meter, sides: dict[str, bench.Side], keys: list[int]
) -> None:
    """One request's session on each side: created and removed, and with
    one get in between.
    """
    for name, side in sides.items():
        session, model, cycle = side.session, side.model, itertools.cycle(keys)

        def bare(session: t.Any = session) -> None:
            session.registry()
            session.remove()

        def get(
            session: t.Any = session, model: t.Any = model, cycle: t.Any = cycle
        ) -> None:
            assert session.get(model, next(cycle)) is not None
            session.remove()

        with side.app.app_context():
            meter(f"{name}: created, removed", bare)
            meter(f"{name}: created, get, removed", get)


class Bind(t.NamedTuple):
    mapper: t.Any
    kw: dict[str, t.Any]


def captured_get_bind(session: PartitionSession, model: type[t.Any], key: int) -> Bind:
    """The arguments SQLAlchemy passes to ``get_bind`` for ``session.get``."""
    calls: list[Bind] = []
    original = PartitionSession.get_bind

    def record(self: PartitionSession, mapper: t.Any = None, **kw: t.Any) -> t.Any:
        calls.append(Bind(mapper, kw))
        return original(self, mapper, **kw)

    PartitionSession.get_bind = record  # type: ignore[method-assign]
    try:
        assert session.get(model, key) is not None
    finally:
        PartitionSession.get_bind = original  # type: ignore[method-assign]
    session.expunge_all()
    assert len(calls) == 1, calls
    return calls[0]


def measure_routing(meter: Meter, sides: dict[str, bench.Side], key: int) -> None:
    """Each step of ``PartitionSession.get_bind`` for the first get of a
    session, and the other sides' ``get_bind``.
    """
    db = bench.db
    with sides["partition"].app.app_context():
        session = db.session()
        bind = captured_get_bind(session, bench.PartitionItem, key)
        clause = bind.kw["clause"]
        cluster = session.router.cluster_for_mapper(bind.mapper)
        replica = cluster.replicas[0]
        plan = _plan.get()
        forget = session._replica_of.clear
        get_bind = functools.partial(session.get_bind, bind.mapper, **bind.kw)
        meter("get_bind", lambda: (forget(), get_bind()), reset=lambda: forget())
        meter("get_bind again", get_bind)
        meter(
            "cluster_for_mapper",
            lambda: session.router.cluster_for_mapper(bind.mapper),
        )
        meter(
            "_engine_for",
            lambda: (forget(), session._engine_for(cluster, clause)),
            reset=lambda: forget(),
        )
        meter("_plan.get", _plan.get)
        meter("classify", lambda: classify(clause))
        meter(
            "_replica",
            lambda: (forget(), session._replica(cluster, plan)),
            reset=lambda: forget(),
        )
        meter("choose", lambda: cluster.choose(None, session._failed))
        meter("_routed", lambda: session._routed(cluster, replica, "replica"))
        db.session.remove()
    for name in ("fsa", "plain"):
        side = sides[name]
        with side.app.app_context():
            other_bind = functools.partial(
                side.session().get_bind, bind.mapper, **bind.kw
            )
            meter(f"{name} get_bind", other_bind)
            side.session.remove()


def measure_session_internals(meter: Meter, sides: dict[str, bench.Side]) -> None:
    """The session's creation, events and overrides besides get_bind."""
    db = bench.db
    with sides["partition"].app.app_context():
        meter("PartitionSession()", db.session.session_factory)
        meter("Session()", sides["plain"].session.session_factory)
        session = db.session()
        session.connection()  # begins the root transaction
        transaction = session._transaction
        assert transaction is not None
        meter(
            "on_transaction_create",
            lambda: on_transaction_create(session, transaction),
        )
        meter(
            "_after_transaction_end",
            lambda: _after_transaction_end(session, transaction),
        )
        meter("_release_replicas", session._release_replicas)
        db.session.remove()


def measure_requests(
    meter: Meter, sides: dict[str, bench.Side], keys: list[int]
) -> None:
    for name, side in sides.items():
        paths = itertools.cycle([f"/items/{key}" for key in keys])

        def request(client: t.Any = side.client, paths: t.Any = paths) -> None:
            client.get(next(paths))

        meter(f"request {name}", request)


def measure_all(meter: Meter, rows: int) -> None:
    """Build the apps and measure every key, in a fixed order."""
    keys = list(range(1, rows + 1))
    random.Random(0).shuffle(keys)
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as folder:
        url = f"sqlite:///{os.path.join(folder, 'items.db')}"
        bench.seed(url, rows)
        sides = bench.make_sides(url, url)
        tokens = bench.make_partition(url, url, "tokens", PARTITION_CONSISTENCY="time")
        for side in [*sides.values(), tokens]:
            for key in keys[:200]:
                side.client.get(f"/items/{key}")
        measure_requests(meter, sides, keys)
        measure_hooks(meter, sides["partition"].app)
        measure_tokens(meter, tokens.app)
        measure_sessions(meter, sides, keys)
        measure_routing(meter, sides, keys[0])
        measure_session_internals(meter, sides)
        for side in [*sides.values(), tokens]:
            for engine in side.engines:
                engine.dispose()


# -- the report ---------------------------------------------------------------


class Report:
    """Print measured values, in instructions and microseconds or in
    microseconds only.
    """

    def __init__(
        self,
        values: dict[str, float],
        us_per_unit: float | None,
        registered: list[str],
    ) -> None:
        self.values = values
        #: The request hooks side partition's app has (all three unless
        #: init_app leaves out those with nothing to do).
        self.registered = registered
        #: Microseconds per instruction; ``None`` when values are microseconds.
        self.us_per_unit = us_per_unit

    def us(self, key: str) -> float:
        value = self.values[key]
        return value if self.us_per_unit is None else value * self.us_per_unit

    def table(self, title: str, rows: list[tuple[str, str | float]]) -> None:
        """Print rows of (label, key or value in the meter's unit)."""
        print(f"\n{title}")
        if self.us_per_unit is None:
            print(f"  {'':<58} {'us':>8}")
        else:
            print(f"  {'':<58} {'us':>8} {'instr':>9}")
        for label, what in rows:
            value = self.values[what] if isinstance(what, str) else what
            if self.us_per_unit is None:
                print(f"  {label:<58} {value:>8.2f}")
            else:
                print(f"  {label:<58} {value * self.us_per_unit:>8.2f} {value:>9.0f}")

    def print(self) -> None:
        v = self.values
        self.table(
            "whole request (test client, one get, JSON answer)",
            [
                *((f"side {name}", f"request {name}") for name in SIDES),
                ("partition minus plain", "request partition-plain"),
                ("partition minus fsa", "request partition-fsa"),
            ],
        )
        hooks = ["before_request", "after_request", "teardown_request"]
        self.table(
            "request hooks (side partition: default config, tokens off on SQLite)",
            [
                ("before_request    PartitionDB._before_request", hooks[0]),
                ("after_request     PartitionDB._after_request", hooks[1]),
                ("teardown_request  PartitionDB._reset_request", hooks[2]),
                ("  the three together", sum(v[k] for k in hooks)),
                ("  in each: Flask's dispatch (app.ensure_sync)", "dispatch"),
                ("  in each: PartitionDB.get_state()", "get_state"),
            ],
        )
        self.table(
            "token hooks (PARTITION_CONSISTENCY='time': tokens on)",
            [
                ("no token: the 3 hooks", "no token: 3 hooks"),
                ("  in before_request: _read_token", "no token: _read_token"),
                ("token every replica passed: the 3 hooks", "passed token: 3 hooks"),
                ("  in before_request: _read_token", "passed token: _read_token"),
                ("TokenCodec.loads, cached", "loads cached"),
                ("TokenCodec.loads, signature verified", "loads verified"),
                ("TokenCodec.dumps", "dumps"),
            ],
        )
        session_rows: list[tuple[str, str | float]] = []
        for name in SIDES:
            session_rows.append(
                (f"{name}: created, removed", f"{name}: created, removed")
            )
            session_rows.append(
                (f"{name}: created, one get, removed", f"{name}: created, get, removed")
            )
        for name in ("plain", "fsa"):
            for what in ("created, removed", "created, get, removed"):
                session_rows.append(
                    (
                        f"partition minus {name}: {what}",
                        v[f"partition: {what}"] - v[f"{name}: {what}"],
                    )
                )
        self.table("one request's session (scoped, removed at teardown)", session_rows)
        self.table(
            "routing steps of that get (first read of a session)",
            [
                ("PartitionSession.get_bind", "get_bind"),
                ("  Router.cluster_for_mapper (cached)", "cluster_for_mapper"),
                ("  PartitionSession._engine_for", "_engine_for"),
                ("    _plan.get()", "_plan.get"),
                ("    routing.classify(clause)", "classify"),
                ("    PartitionSession._replica", "_replica"),
                ("      Cluster.choose", "choose"),
                ("      PartitionSession._routed (nothing listens)", "_routed"),
                (
                    "PartitionSession.get_bind, the session's replica again",
                    "get_bind again",
                ),
                ("Flask-SQLAlchemy Session.get_bind, same arguments", "fsa get_bind"),
                (
                    "SQLAlchemy Session.get_bind (bound), same arguments",
                    "plain get_bind",
                ),
            ],
        )
        self.table(
            "session creation, events and overrides besides get_bind",
            [
                ("PartitionSession() (db.session's factory)", "PartitionSession()"),
                ("  SQLAlchemy Session() (side plain's factory)", "Session()"),
                (
                    "after_transaction_create: on_transaction_create",
                    "on_transaction_create",
                ),
                (
                    "after_transaction_end: _after_transaction_end",
                    "_after_transaction_end",
                ),
                (
                    "close: _release_replicas, no replica connection",
                    "_release_replicas",
                ),
            ],
        )
        extra = v["request partition-plain"]
        hooks_sum = sum(v[k] for k in hooks if k in self.registered)
        session = (
            v["partition: created, get, removed"] - v["plain: created, get, removed"]
        )
        self.table(
            "where side partition's extra per request goes, against side plain",
            [
                (
                    f"the request hooks registered ({len(self.registered)} of 3)",
                    hooks_sum,
                ),
                ("the session (created, one get, removed)", session),
                ("  of which get_bind", v["get_bind"] - v["plain get_bind"]),
                (
                    "  of which creating and removing it",
                    v["partition: created, removed"] - v["plain: created, removed"],
                ),
                ("not accounted for", extra - hooks_sum - session),
                ("whole request, partition minus plain", extra),
            ],
        )


# -- running ------------------------------------------------------------------


def time_requests(rows: int, rounds: int) -> dict[str, float]:
    """Time whole requests in bench/requests.py's paired rounds: the median
    microseconds per request of each side, and side partition's median
    same-round difference with sides plain and fsa.
    """
    keys = list(range(1, rows + 1))
    random.Random(0).shuffle(keys)
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as folder:
        url = f"sqlite:///{os.path.join(folder, 'items.db')}"
        bench.seed(url, rows)
        sides = bench.make_sides(url, url)
        ordered = list(sides.values())
        bench.run_rounds(ordered, 20, 0, keys, 10)
        for side in ordered:
            side.times, side.cpu = [], []
        bench.run_rounds(ordered, rounds, 20, keys, 10)
        for side in ordered:
            for engine in side.engines:
                engine.dispose()
    times = {
        f"request {name}": statistics.median(side.times) * 1e6
        for name, side in sides.items()
    }
    for name in ("plain", "fsa"):
        times[f"request partition-{name}"] = 1e6 * paired(
            sides["partition"].times, sides[name].times, operator.sub
        )
    return times


def registered_hooks() -> list[str]:
    """Which of the request hooks side partition's app has."""
    db = bench.db
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as folder:
        url = f"sqlite:///{os.path.join(folder, 'items.db')}"
        app = bench.make_partition(url, url, "probe").app
        for engine in db.get_router(app).engines():
            engine.dispose()
    found = {
        "before_request": db._before_request in app.before_request_funcs.get(None, ()),
        "after_request": db._after_request in app.after_request_funcs.get(None, ()),
        "teardown_request": db._reset_request
        in app.teardown_request_funcs.get(None, ()),
    }
    return [name for name, present in found.items() if present]


def count_instructions(args: argparse.Namespace) -> dict[str, float]:
    """Run this script under callgrind in ``--marked`` mode; return the
    instructions per call of every key.
    """
    with tempfile.TemporaryDirectory(prefix="partition-callgrind-") as folder:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--dump-before={MARK}",
            f"--callgrind-out-file={os.path.join(folder, 'cg.out')}",
            sys.executable,
            os.path.abspath(__file__),
            "--marked",
            folder,
            "--number",
            str(args.number),
            "--rows",
            str(args.rows),
        ]
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stdout + done.stderr)
            raise RuntimeError(f"callgrind run failed with status {done.returncode}")
        with open(os.path.join(folder, "keys.txt")) as f:
            keys = f.read().split("\n")[:-1]
        return read_counts(folder, keys, args.number)


def profile(rows: int, requests: int) -> None:
    """Print what cProfile sees over ``requests`` requests per side."""
    keys = list(range(1, rows + 1))
    paths = [f"/items/{keys[i % len(keys)]}" for i in range(requests)]
    stats: dict[str, dict[t.Any, t.Any]] = {}
    with tempfile.TemporaryDirectory(prefix="partition-bench-") as folder:
        url = f"sqlite:///{os.path.join(folder, 'items.db')}"
        bench.seed(url, rows)
        sides = bench.make_sides(url, url)
        for name in ("plain", "partition"):
            client = sides[name].client
            for path in paths[:200]:
                client.get(path)
            profiler = cProfile.Profile()
            profiler.enable()
            for path in paths:
                client.get(path)
            profiler.disable()
            stats[name] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        for side in sides.values():
            for engine in side.engines:
                engine.dispose()
    per = 1e6 / requests

    def label(function: tuple[str, int, str]) -> str:
        path, line, name = function
        for marker in ("site-packages/", "wt-bench/", "lib/python3"):
            if marker in path:
                path = path.split(marker, 1)[1]
        return f"{path}:{line}({name})"

    print(
        f"\ncProfile, {requests} requests per side; us per request under the profiler"
    )
    print(f"  {'cumulative':>10} {'own':>7} {'calls':>5}  Flask-Partition function")
    partition = stats["partition"]
    ours = [f for f in partition if "flask_partition" in f[0]]
    for function in sorted(ours, key=lambda f: -partition[f][3]):
        _, calls, own, cumulative, _ = partition[function]
        print(
            f"  {cumulative * per:>10.1f} {own * per:>7.1f}"
            f" {calls / requests:>5.1f}  {label(function)}"
        )
    calls = {n: sum(v[1] for v in s.values()) / requests for n, s in stats.items()}
    print(
        f"  function calls per request: plain {calls['plain']:.0f},"
        f" partition {calls['partition']:.0f}"
    )
    differences = []
    for function in set(stats["plain"]) | set(partition):
        own = [stats[n].get(function, (0, 0, 0.0, 0.0))[2] * per for n in stats]
        differences.append((own[1] - own[0], own[0], own[1], function))
    differences.sort(key=lambda d: -abs(d[0]))
    print(
        f"\n  {'partition':>9} {'minus':>6} {'plain':>7}  own time, largest differences"
    )
    for difference, plain_us, partition_us, function in differences[:20]:
        print(
            f"  {partition_us:>9.1f} {difference:>+6.1f} {plain_us:>7.1f}"
            f"  {label(function)}"
        )


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--meter",
        choices=["instructions", "time"],
        help="count instructions under callgrind (default when valgrind is"
        " installed) or time loops",
    )
    parser.add_argument(
        "--number", type=positive, help="calls per loop (500; 2000 timed)"
    )
    parser.add_argument("--repeat", type=positive, default=7, help="timed loops")
    parser.add_argument("--rows", type=positive, default=1000, help="seeded rows")
    parser.add_argument(
        "--rounds",
        type=positive,
        default=200,
        help="rounds timing side plain's request, for microseconds",
    )
    parser.add_argument(
        "--profile", type=int, default=0, metavar="N", help="cProfile N requests"
    )
    parser.add_argument("--marked", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.meter is None:
        args.meter = "instructions" if shutil.which("valgrind") else "time"
    if args.number is None:
        args.number = 2000 if args.meter == "time" else 500
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.marked:
        # The child under callgrind: measure, write the keys in order.
        meter = MarkMeter(args.number)
        gc.disable()
        measure_all(meter, args.rows)
        with open(os.path.join(args.marked, "keys.txt"), "w") as f:
            f.write("".join(f"{key}\n" for key in meter.keys))
        return 0
    if args.meter == "time":
        timer = TimeMeter(args.number, args.repeat)
        measure_all(timer, args.rows)
        # Whole requests as bench/requests.py times them, paired.
        timer.values.update(time_requests(args.rows, args.rounds))
        print(
            f"Microseconds per call, the fastest of {args.repeat} loops of"
            f" {args.number} calls; whole requests in {args.rounds} paired"
            f" rounds; SQLite, {args.rows} rows. Lower bounds: inside a"
            " request the same code runs slower (see the docstring)."
        )
        Report(timer.values, None, registered_hooks()).print()
    else:
        values = count_instructions(args)
        for name in ("plain", "fsa"):
            values[f"request partition-{name}"] = (
                values["request partition"] - values[f"request {name}"]
            )
        timed = time_requests(args.rows, args.rounds)
        us_per_instruction = timed["request plain"] / values["request plain"]
        print(
            f"Instructions per call under callgrind, loops of {args.number}"
            f" calls; SQLite, {args.rows} rows. Microseconds at side plain's"
            f" {timed['request plain']:.0f} us per request ({args.rounds} timed"
            f" rounds), {1e-3 / us_per_instruction:.2f} instructions per ns."
        )
        ratios = ", ".join(
            f"{name} {values[f'request {name}'] / values['request plain']:.3f}"
            for name in ("fsa", "partition")
        )
        timed_ratios = ", ".join(
            f"{name} {timed[f'request {name}'] / timed['request plain']:.3f}"
            for name in ("fsa", "partition")
        )
        print(
            f"Over side plain, in instructions: {ratios}; in time (medians):"
            f" {timed_ratios}"
        )
        Report(values, us_per_instruction, registered_hooks()).print()
    if args.profile:
        profile(args.rows, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
