"""Sharding proven on real PostgreSQL shard servers: 'eu' (with a streaming
replica), 'us' and 'ap', beside the default cluster and a bind.
"""

from __future__ import annotations

import threading
import time
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import Flask
from sqlalchemy.ext.horizontal_shard import set_shard_id
from sqlalchemy.ext.horizontal_shard import ShardedQuery
from sqlalchemy.sql.util import ClauseAdapter

from flask_partition import AmbiguousShardError
from flask_partition import PartitionDB
from flask_partition import PartitionModel
from flask_partition import ScatterError
from flask_partition import ShardKeyError
from flask_partition import UnknownShardError
from flask_partition import use_primary
from flask_partition import use_replica
from flask_partition import use_shard
from flask_partition.routing import Role
from flask_partition.testing import PostgresTopology
from flask_partition.testing import RoutingRecorder
from shard_models import AuditEvent
from shard_models import Customer
from shard_models import keys_by_shard
from shard_models import Order
from shard_models import OrderLine
from shard_models import payments
from shard_models import sdb
from shard_models import ShardAppFactory

SHARDS = ("eu", "us", "ap")


def _keys_by_shard(app: Flask, count: int = 3) -> dict[str, list[int]]:
    return keys_by_shard(app, SHARDS, count)


def _token(instance: object) -> t.Any:
    """The identity token (the shard) of a loaded instance."""
    key = sa.inspect(instance).identity_key
    assert key is not None
    return key[2]


def _rows_on(pg: PostgresTopology, shard: str, sql: str) -> list[tuple[t.Any, ...]]:
    return pg.shards[shard].primary.query(sql, database="app")


def _seed(app: Flask, rows: int = 60) -> list[dict[str, t.Any]]:
    """Insert orders spread over every shard; return them as dicts."""
    data = []
    for i in range(1, rows + 1):
        data.append(
            {
                "id": i,
                "customer_id": i % 13 + 1,
                "amount": (i * 37) % 101,
                "note": None if i % 5 == 0 else f"n{i % 7}",
            }
        )
    with app.app_context():
        sdb.session.add_all(Order(**row) for row in data)
        sdb.session.commit()
    return data


def test_every_row_lands_on_the_shard_its_key_maps_to(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    data = _seed(app)
    shard_map = sdb.get_router(app).shard_map
    assert shard_map is not None
    seen: dict[int, str] = {}
    for shard in SHARDS:
        for order_id, customer_id in _rows_on(
            pg, shard, 'SELECT id, customer_id FROM "order"'
        ):
            assert order_id not in seen, f"order {order_id} on two shards"
            seen[order_id] = shard
            assert shard_map.shard_for(customer_id) == shard
    assert sorted(seen) == [row["id"] for row in data]
    assert len(set(seen.values())) == 3, "60 rows over 13 keys use every shard"
    assert pg.primary is not None
    # Sharded tables exist only on the shards; the default cluster has users.
    assert pg.primary.query(
        "SELECT to_regclass('public.order') IS NULL", database="app"
    ) == [(True,)]


def test_scatter_reads_equal_one_query_over_the_union(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    """Every merge rule, checked against PostgreSQL itself answering the same
    statement over a table holding the union of all shards' rows.
    """
    app = make_pg_shard_app()
    data = _seed(app, rows=90)
    assert pg.primary is not None
    union = sa.create_engine(pg.primary.url("app"))
    union_md = sa.MetaData()
    union_order = t.cast(sa.Table, Order.__table__).to_metadata(union_md)
    union_md.drop_all(union)
    union_md.create_all(union)
    with union.begin() as conn:
        conn.execute(sa.insert(union_order), data)
    o = Order.__table__.c
    statements: list[t.Any] = [
        sa.select(o.id, o.amount).order_by(o.amount.desc(), o.id).limit(7).offset(5),
        sa.select(o.id).order_by(o.note, o.id.desc()).limit(10),
        sa.select(o.id).order_by(o.note.desc().nulls_last(), o.id).offset(80),
        sa.select(sa.func.count(), sa.func.sum(o.amount), sa.func.min(o.amount),
                  sa.func.max(o.amount)),
        sa.select(sa.func.count()).where(o.amount > 50),
        sa.select(o.note, sa.func.count().label("n"), sa.func.max(o.amount))
        .group_by(o.note).order_by(sa.desc("n"), o.note.nulls_first()),
        sa.select(o.note, sa.func.sum(o.amount)).group_by(o.note)
        .order_by(sa.func.sum(o.amount).desc()).limit(3).offset(1),
        sa.select(o.customer_id, sa.func.count()).group_by(o.customer_id)
        .having(sa.func.count() > 6).order_by(o.customer_id),
        sa.select(o.note).distinct().order_by(o.note).limit(4),
        sa.select(o.amount).where(o.customer_id.in_([1, 2, 3])).order_by(o.amount),
    ]  # fmt: skip
    with app.app_context():
        for statement in statements:
            with union.connect() as conn:
                expected = conn.execute(_on(statement, union_order)).all()
            got = sdb.session.execute(statement).all()
            assert [tuple(r) for r in got] == [tuple(r) for r in expected], statement
    union_md.drop_all(union)
    union.dispose()


def _on(statement: sa.Select[t.Any], table: sa.Table) -> sa.Select[t.Any]:
    """The same statement against ``table`` (the union copy)."""
    return ClauseAdapter(table).traverse(statement)


def test_orm_scatter_merges_entities_and_keeps_identity(
    make_pg_shard_app: ShardAppFactory,
) -> None:
    app = make_pg_shard_app()
    data = _seed(app)
    expected = sorted(data, key=lambda r: (-r["amount"], r["id"]))[3:8]
    with app.app_context():
        got = sdb.session.scalars(
            sa.select(Order).order_by(Order.amount.desc(), Order.id).limit(5).offset(3)
        ).all()
        assert [o.id for o in got] == [r["id"] for r in expected]
        shard_map = sdb.get_router(app).shard_map
        assert shard_map is not None
        for order in got:
            assert _token(order) == shard_map.shard_for(order.customer_id)
        # Legacy Query over every shard returns objects, counts correctly.
        assert sdb.session.query(Order).count() == len(data)
        first = sdb.session.query(Order).order_by(Order.id).first()
        assert isinstance(first, Order) and first.id == 1


def test_key_targeted_reads_touch_only_their_shards(
    make_pg_shard_app: ShardAppFactory,
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app)
    with app.app_context():
        for shard, ids in keys.items():
            for i, cid in enumerate(ids):
                sdb.session.add(
                    Order(
                        id=len(sdb.session.new)
                        + 1
                        + 10 * i
                        + 100 * SHARDS.index(shard),
                        customer_id=cid,
                    )
                )
        sdb.session.commit()
    with app.app_context(), RoutingRecorder(sdb, app) as rec:
        eu_key = keys["eu"][0]
        rows = sdb.session.scalars(
            sa.select(Order).where(Order.customer_id == eu_key)
        ).all()
        assert [o.customer_id for o in rows] == [eu_key]
        assert {s.cluster for s in rec.statements} == {"eu"}
        rec.clear()
        wanted = [keys["us"][0], keys["ap"][1]]
        rows = sdb.session.scalars(
            sa.select(Order).where(Order.customer_id.in_(wanted), Order.amount >= 0)
        ).all()
        assert sorted(o.customer_id for o in rows) == sorted(wanted)
        assert {s.cluster for s in rec.statements} == {"us", "ap"}
        rec.clear()
        total = sdb.session.scalar(sa.select(sa.func.count()).select_from(Order))
        assert total == 9
        assert {s.cluster for s in rec.statements} == set(SHARDS)


def test_scatter_runs_shards_in_parallel(make_pg_shard_app: ShardAppFactory) -> None:
    """Each shard's query runs on its own thread, and all overlap in time."""
    app = make_pg_shard_app()
    _seed(app, rows=12)
    spans: dict[str, tuple[float, float, int]] = {}
    lock = threading.Lock()
    router = sdb.get_router(app)

    def before(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        conn.info["t0"] = time.perf_counter()

    def after(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if "pg_sleep" in statement:
            name = router.node(conn.engine)
            assert name is not None
            with lock:
                spans[str(name[0])] = (
                    conn.info["t0"],
                    time.perf_counter(),
                    threading.get_ident(),
                )

    engines = [e for name in SHARDS for e in router.shards[name].engines()]
    for engine in engines:
        sa.event.listen(engine, "before_cursor_execute", before)
        sa.event.listen(engine, "after_cursor_execute", after)
    try:
        with app.app_context():
            slow = (
                sa.select(sa.func.count())
                .select_from(Order)
                .where(sa.literal_column("(SELECT pg_sleep(0.2)) IS NOT NULL"))
            )
            assert sdb.session.scalar(slow) == 12
    finally:
        for engine in engines:
            sa.event.remove(engine, "before_cursor_execute", before)
            sa.event.remove(engine, "after_cursor_execute", after)
    assert set(spans) == set(SHARDS)
    assert len({ident for _, _, ident in spans.values()}) == 3
    latest_start = max(start for start, _, _ in spans.values())
    earliest_end = min(end for _, end, _ in spans.values())
    assert latest_start < earliest_end, "shard queries ran one after another"


def test_use_shard_reads_and_writes_only_its_shard(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app)
    _seed(app)

    @app.post("/eu/orders/<int:cid>")
    @use_shard("eu")
    def eu_create(cid: int) -> str:
        sdb.session.add(Order(id=1000 + cid, customer_id=cid))
        sdb.session.commit()
        return "ok"

    @app.get("/eu/count")
    @use_shard("eu")
    def eu_count() -> str:
        return str(sdb.session.scalar(sa.select(sa.func.count()).select_from(Order)))

    @app.get("/zz")
    @use_shard("zz")
    def unknown() -> str:  # pragma: no cover - never runs
        return "no"

    client = app.test_client()
    eu_rows = _rows_on(pg, "eu", 'SELECT count(*) FROM "order"')[0][0]
    pg.wait_for_replay(*pg.shards["eu"].replicas)
    assert client.get("/eu/count").text == str(eu_rows)
    assert client.post(f"/eu/orders/{keys['eu'][0]}").text == "ok"
    assert _rows_on(pg, "eu", 'SELECT customer_id FROM "order" WHERE id >= 1000') == [
        (keys["eu"][0],)
    ]
    # A key of another shard is refused inside use_shard('eu'): nothing written.
    with pytest.raises(ShardKeyError, match="'us'.*'eu'"):
        client.post(f"/eu/orders/{keys['us'][0]}")
    for shard in SHARDS:
        assert _rows_on(pg, shard, 'SELECT count(*) FROM "order" WHERE id >= 1000')[0][
            0
        ] == (1 if shard == "eu" else 0)
    with pytest.raises(UnknownShardError, match="'zz'.*'eu', 'us', 'ap'"):
        client.get("/zz")


def test_same_primary_key_on_two_shards_is_held_apart(
    make_pg_shard_app: ShardAppFactory,
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app)
    with app.app_context():
        with use_shard("eu"):
            sdb.session.add(Order(id=7, customer_id=keys["eu"][0], note="eu"))
        sdb.session.commit()
        with use_shard("us"):
            sdb.session.add(Order(id=7, customer_id=keys["us"][0], note="us"))
            sdb.session.commit()
    with app.app_context():
        both = sdb.session.scalars(sa.select(Order).order_by(Order.note)).all()
        assert [o.note for o in both] == ["eu", "us"]
        assert both[0] is not both[1]
        assert {_token(o) for o in both} == {"eu", "us"}
        with pytest.raises(AmbiguousShardError, match=r"\['eu', 'us'\]"):
            sdb.session.get(Order, 7, populate_existing=True)
        with use_shard("us"):
            assert t.cast(Order, sdb.session.get(Order, 7)).note == "us"
        assert (
            t.cast(Order, sdb.session.get(Order, 7, identity_token="eu")).note == "eu"
        )
    with app.app_context():
        with use_shard("eu"):
            order = sdb.session.get(Order, 7)
            assert order is not None
            order.note = "eu2"
        sdb.session.commit()
        with use_shard("us"):
            assert t.cast(Order, sdb.session.get(Order, 7)).note == "us"


def test_get_without_shard_finds_the_row_on_any_shard(
    make_pg_shard_app: ShardAppFactory,
) -> None:
    app = make_pg_shard_app()
    data = _seed(app)
    with app.app_context():
        order = sdb.session.get(Order, 42)
        assert order is not None
        assert order.customer_id == data[41]["customer_id"]
        assert sdb.session.get(Order, 10_000) is None


def test_replica_routing_inside_a_shard(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    """Shard 'eu' has a streaming replica: reads use it, and after a write
    the session reads its own write from eu's primary.
    """
    app = make_pg_shard_app()
    keys = _keys_by_shard(app)
    eu_replicas = pg.shards["eu"].replicas
    pg.pause_replay(*eu_replicas)
    cid = keys["eu"][0]
    _rows_on(
        pg,
        "eu",
        f'INSERT INTO "order" (id, customer_id, amount) VALUES (500, {cid}, 1)',
    )
    with app.app_context(), RoutingRecorder(sdb, app) as rec:
        stale = sdb.session.scalars(
            sa.select(Order).where(Order.customer_id == cid)
        ).all()
        assert stale == [], "the paused replica cannot see the row yet"
        assert rec.roles("eu") == [Role.REPLICA]
    with app.app_context(), RoutingRecorder(sdb, app) as rec:
        sdb.session.add(Order(id=501, customer_id=cid, amount=2))
        sdb.session.commit()
        mine = sdb.session.scalars(
            sa.select(Order.id).where(Order.customer_id == cid).order_by(Order.id)
        ).all()
        assert mine == [500, 501]
        assert rec.roles("eu")[-1] is Role.PRIMARY
    with app.app_context(), use_primary(), use_shard("eu"):
        assert sdb.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 2
    with app.app_context(), use_replica(), use_shard("eu"):
        assert sdb.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 0
    pg.resume_replay(*eu_replicas)


def test_refused_writes_leave_every_shard_untouched(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app)
    _seed(app)

    def snapshot() -> list[list[tuple[t.Any, ...]]]:
        return [
            _rows_on(pg, s, 'SELECT id, customer_id, amount FROM "order" ORDER BY id')
            for s in SHARDS
        ]

    before = snapshot()
    with app.app_context():
        with pytest.raises(ScatterError, match="all_shards=True"):
            sdb.session.execute(sa.update(Order).values(amount=0))
        sdb.session.rollback()
        with pytest.raises(ScatterError, match="all_shards=True"):
            sdb.session.execute(sa.delete(payments))
        sdb.session.rollback()
        order = sdb.session.get(Order, 1)
        assert order is not None
        order.customer_id = keys["ap"][2] if order.customer_id != keys["ap"][2] else 1
        with pytest.raises(ShardKeyError, match="Order.customer_id is the shard key"):
            sdb.session.commit()
        sdb.session.rollback()
        sdb.session.add(Order(id=999, amount=3))
        with pytest.raises(
            ShardKeyError, match=r"Order\.customer_id \(the shard key\)"
        ):
            sdb.session.commit()
        sdb.session.rollback()
        with pytest.raises(ShardKeyError, match="'customer_id'"):
            sdb.session.execute(sa.insert(payments).values(id=1, cents=5))
        sdb.session.rollback()
    assert snapshot() == before
    with app.app_context():
        result = sdb.session.execute(
            sa.update(Order).values(amount=0).execution_options(all_shards=True)
        )
        assert result.rowcount == 60  # type: ignore[attr-defined]
        sdb.session.commit()
    assert all(amount == 0 for rows in snapshot() for (_, _, amount) in rows)


def test_core_insert_splits_rows_by_shard_and_core_reads_scatter(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app, count=2)
    rows = [
        {"id": i, "customer_id": cid, "cents": 10 * i}
        for i, cid in enumerate([k for ks in keys.values() for k in ks], start=1)
    ]
    with app.app_context():
        sdb.session.execute(sa.insert(payments), rows)
        sdb.session.commit()
        assert sdb.session.scalar(sa.select(sa.func.sum(payments.c.cents))) == sum(
            r["cents"] for r in rows
        )
        top = (
            sdb.session.execute(
                sa.select(payments.c.id).order_by(payments.c.cents.desc()).limit(2)
            )
            .scalars()
            .all()
        )
        assert top == [6, 5]
    for shard, ks in keys.items():
        assert sorted(
            c for (c,) in _rows_on(pg, shard, "SELECT customer_id FROM payment")
        ) == sorted(ks)


def test_relationships_load_from_the_parents_shard(
    make_pg_shard_app: ShardAppFactory,
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app)
    with app.app_context():
        for shard in SHARDS:
            cid = keys[shard][0]
            with use_shard(shard):
                order = Order(id=1, customer_id=cid, note=shard)
                order.lines = [
                    OrderLine(id=1, customer_id=cid, sku=f"{shard}-a"),
                    OrderLine(id=2, customer_id=cid, sku=f"{shard}-b"),
                ]
                sdb.session.add(order)
                sdb.session.flush()
        sdb.session.commit()
    with app.app_context(), RoutingRecorder(sdb, app) as rec:
        orders = sdb.session.scalars(sa.select(Order).order_by(Order.note)).all()
        rec.clear()
        for order in orders:
            skus = [line.sku for line in order.lines]
            assert skus == [f"{order.note}-a", f"{order.note}-b"]
        assert [s.cluster for s in rec.statements] == ["ap", "eu", "us"]
        rec.clear()
        loaded = sdb.session.scalars(
            sa.select(Order)
            .options(sa_orm.selectinload(Order.lines))
            .where(Order.customer_id == keys["us"][0])
        ).all()
        assert [line.sku for line in loaded[0].lines] == ["us-a", "us-b"]
        assert {s.cluster for s in rec.statements} == {"us"}


def test_sqlalchemy_shard_controls_keep_working(
    make_pg_shard_app: ShardAppFactory,
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app)
    _seed(app)
    with app.app_context(), RoutingRecorder(sdb, app) as rec:
        count = sa.select(sa.func.count()).select_from(Order)
        per_shard = {
            s: sdb.session.scalar(count.options(set_shard_id(s))) for s in SHARDS
        }
        assert sum(t.cast(int, v) for v in per_shard.values()) == 60
        assert (
            sdb.session.scalar(count, bind_arguments={"shard_id": "us"})
            == (per_shard["us"])
        )
        query = t.cast(ShardedQuery[Order], sdb.session.query(Order))
        assert query.set_shard("ap").count() == per_shard["ap"]
        assert {s.cluster for s in rec.statements} == set(SHARDS)
        with pytest.raises(UnknownShardError, match="'nope'"):
            sdb.session.scalar(count.options(set_shard_id("nope")))
    assert keys


def test_custom_choosers_replace_the_defaults(pg: PostgresTopology) -> None:
    class Base(PartitionModel, sa_orm.DeclarativeBase):
        pass

    calls: list[str] = []

    def shard_chooser(mapper: t.Any, instance: t.Any, clause: t.Any) -> str:
        calls.append("shard")
        return "us" if instance.region == "america" else "eu"

    def identity_chooser(mapper: t.Any, primary_key: t.Any, **kw: t.Any) -> list[str]:
        calls.append("identity")
        return ["us"]

    def execute_chooser(context: t.Any) -> list[str]:
        calls.append("execute")
        return ["eu", "us"]

    cdb = PartitionDB(
        model_class=Base,
        shard_chooser=shard_chooser,
        identity_chooser=identity_chooser,
        execute_chooser=execute_chooser,
    )

    class Ticket(Base):
        __shard_key__ = "region"
        id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
        region: sa_orm.Mapped[str]

    assert pg.primary is not None
    app = Flask("choosers")
    app.config.update(
        SECRET_KEY="test secret",
        PARTITION_DATABASE_URI=pg.primary.url("app"),
        PARTITION_SHARDS={name: s.config("app") for name, s in pg.shards.items()},
    )
    cdb.init_app(app)
    try:
        with app.app_context():
            cdb.drop_all()
            cdb.create_all()
            cdb.session.add_all(
                [Ticket(id=1, region="america"), Ticket(id=2, region="europe")]
            )
            cdb.session.commit()
            assert calls.count("shard") == 2
            assert pg.shards["us"].primary.query(
                "SELECT id FROM ticket", database="app"
            ) == [(1,)]
            ids = cdb.session.scalars(sa.select(Ticket.id).order_by(Ticket.id)).all()
            assert ids == [1, 2] and "execute" in calls
        with app.app_context():
            assert cdb.session.get(Ticket, 2) is None  # identity chooser: 'us' only
            assert "identity" in calls
            cdb.session.remove()
            cdb.drop_all()
    finally:
        for engine in cdb.get_router(app).engines():
            engine.dispose()


def test_unsharded_models_beside_shards_are_unaffected(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    with app.app_context():
        sdb.session.add(Customer(id=1, name="ann"))
        sdb.session.add(AuditEvent(id=1, what="signup"))
        sdb.session.commit()
        customer = sdb.session.get(Customer, 1)
        assert customer is not None
        assert _token(customer) is None
    assert pg.primary is not None
    assert pg.primary.query("SELECT name FROM customer", database="app") == [("ann",)]
    assert pg.primary.query("SELECT what FROM audit_event", database="analytics") == [
        ("signup",)
    ]


def test_orm_bulk_insert_splits_rows_by_shard(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app, count=2)
    rows = [
        {"id": i, "customer_id": cid, "amount": i}
        for i, cid in enumerate([k for ks in keys.values() for k in ks], start=1)
    ]
    with app.app_context():
        sdb.session.execute(sa.insert(Order), rows)
        sdb.session.execute(
            sa.insert(Order), [{"id": 50, "customer_id": keys["ap"][0]}]
        )
        sdb.session.commit()
        assert sdb.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 7
    for shard, ks in keys.items():
        found = _rows_on(pg, shard, 'SELECT DISTINCT customer_id FROM "order"')
        assert sorted(c for (c,) in found) == sorted(ks)


def test_paginate_and_repeated_scatters_in_one_session(
    make_pg_shard_app: ShardAppFactory,
) -> None:
    """Pagination pages and totals are exact over shards, and many parallel
    scatters leave the session's transaction usable for a write and commit.
    """
    app = make_pg_shard_app()
    data = _seed(app, rows=45)
    ordered = [r["id"] for r in sorted(data, key=lambda r: (r["amount"], r["id"]))]
    with app.test_request_context("/?page=3&per_page=7"):
        page = sdb.paginate(sa.select(Order).order_by(Order.amount, Order.id))
        assert [o.id for o in page.items] == ordered[14:21]
        assert (page.total, page.pages, page.has_next) == (45, 7, True)
        for _ in range(50):
            total = sdb.session.scalar(sa.select(sa.func.sum(Order.amount)))
            assert total == sum(r["amount"] for r in data)
        sdb.session.add(Order(id=100, customer_id=1, amount=1))
        sdb.session.commit()
        assert sdb.session.scalar(sa.select(sa.func.count()).select_from(Order)) == 46


def test_relating_rows_of_two_shards_is_refused(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    app = make_pg_shard_app()
    keys = _keys_by_shard(app)
    with app.app_context():
        order = Order(id=1, customer_id=keys["eu"][0])
        order.lines = [OrderLine(id=1, customer_id=keys["us"][0], sku="x")]
        sdb.session.add(order)
        with pytest.raises(ShardKeyError, match="shard 'us'"):
            sdb.session.commit()
        sdb.session.rollback()
    for shard in SHARDS:
        assert _rows_on(pg, shard, 'SELECT count(*) FROM "order"') == [(0,)]


def test_shard_replica_down_scatter_and_tokens_still_correct(
    make_pg_shard_app: ShardAppFactory, pg: PostgresTopology
) -> None:
    """Shard 'eu''s replica dies: a scatter read is retried without it and
    stays exact; a token for 'eu' from a write is honoured by the next
    request, since the eu replica is paused.
    """
    app = make_pg_shard_app(PARTITION_DEBUG_HEADER=True, PARTITION_REPLICA_COOLDOWN=0.2)

    @app.post("/orders/<int:cid>/<int:oid>")
    def add_order(cid: int, oid: int) -> str:
        sdb.session.add(Order(id=oid, customer_id=cid, amount=oid))
        sdb.session.commit()
        return "added"

    @app.get("/orders")
    def order_total() -> dict[str, t.Any]:
        total = sdb.session.scalar(sa.select(sa.func.sum(Order.amount)))
        return {"total": total}

    keys = _keys_by_shard(app)
    client = app.test_client()
    for number, shard in enumerate(SHARDS, start=1):
        assert client.post(f"/orders/{keys[shard][0]}/{number}").status_code == 200
    pg.wait_for_replay(*pg.shards["eu"].replicas)
    fresh = app.test_client(use_cookies=False)
    assert fresh.get("/orders").json == {"total": 6}

    eu_replica = pg.shards["eu"].replicas[0]
    pg.stop_node(eu_replica)
    try:
        response = fresh.get("/orders")
        assert response.json == {"total": 6}
        route = response.headers["X-Partition-Route"]
        assert "shard:eu/replica[0] x1" in route and "shard:eu/primary x1" in route
    finally:
        pg.start_node(eu_replica)
        pg.wait_for_replay(eu_replica)
    time.sleep(0.2)  # the cool-down: the replica is tried again

    pg.pause_replay(eu_replica)
    assert client.post(f"/orders/{keys['eu'][1]}/10").status_code == 200
    # The writer's token for 'eu' sends it to eu's primary; others see the
    # paused replica's older total.
    assert client.get("/orders").json == {"total": 16}
    assert fresh.get("/orders").json == {"total": 6}
