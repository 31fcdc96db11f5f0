"""The SQLAlchemy internals ``flask_partition._sqla`` reads, checked on real
SQLAlchemy objects.

One test (or a small parametrized group) per function and per override of
``_sqla``. Each runs inside :func:`_seam`, so when a SQLAlchemy release
changes an internal, the failure names the ``_sqla`` function that broke, the
installed SQLAlchemy and what Flask-Partition expected of it.

Where SQLAlchemy 2.0 and 2.1 differ, a test branches on :data:`SA_20` and
says why. A docstring of ``_sqla`` that its code does not honour is marked
with :func:`_bug` (a strict xfail: fixing the code makes the test fail until
the mark goes).

The last test keeps SQLAlchemy's private API out of every other module.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import pathlib
import sys
import typing as t
import warnings

import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.horizontal_shard import set_shard_id
from sqlalchemy.ext.horizontal_shard import ShardedSession

from flask_partition import _sqla
from flask_partition.session import PartitionSession
from flask_partition.transactions.modes import TwoPhaseTransaction

#: SQLAlchemy 2.0.x rather than 2.1.x.
SA_20 = tuple(int(part) for part in sa.__version__.split(".")[:2]) < (2, 1)


@contextlib.contextmanager
def _seam(function: str, expected: str) -> t.Iterator[None]:
    """Turn any failure inside into one that names the ``_sqla`` function,
    the installed SQLAlchemy and what was expected of it.
    """
    name = function if function.isupper() else f"{function}()"
    try:
        yield
    except Exception as error:  # AssertionError too: add the context to it
        raise AssertionError(
            f"flask_partition._sqla.{name} broke on SQLAlchemy"
            f" {sa.__version__}: expected {expected}."
            f" Got {type(error).__name__}: {error}"
        ) from error


def _bug(reason: str, *, where: bool = True) -> pytest.MarkDecorator:
    """Mark a case where ``_sqla`` does not do what its docstring says (on
    the SQLAlchemy releases ``where`` is true for).
    """
    return pytest.mark.xfail(where, strict=True, raises=AssertionError, reason=reason)


def _expect_known(found: dict[str, str], known: dict[str, str], fix: str) -> None:
    """Pass when nothing is found; xfail while exactly the ``known``
    (reported) problems remain; fail on any other difference.
    """
    assert set(found) <= set(known), "\n".join(
        message for key, message in sorted(found.items()) if key not in known
    )
    fixed = sorted(set(known) - set(found))
    assert not fixed, f"Fixed, remove from {fix}: {fixed}"
    if known:
        pytest.xfail("; ".join(f"{key}: {reason}" for key, reason in known.items()))


# -- schema ---------------------------------------------------------------

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("x", sa.Integer),
    sa.Column("y", sa.Integer),
)
tags = sa.Table(
    "tags",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.ForeignKey("items.id")),
)


class Base(sa_orm.DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "parent"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    name: sa_orm.Mapped[str] = sa_orm.mapped_column(default="")
    children: sa_orm.Mapped[list[Child]] = sa_orm.relationship(back_populates="parent")


class Child(Base):
    __tablename__ = "child"
    id: sa_orm.Mapped[int] = sa_orm.mapped_column(primary_key=True)
    parent_id: sa_orm.Mapped[int] = sa_orm.mapped_column(sa.ForeignKey("parent.id"))
    parent: sa_orm.Mapped[Parent] = sa_orm.relationship(back_populates="children")


@pytest.fixture
def engine() -> t.Iterator[sa.Engine]:
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: sa.Engine) -> t.Iterator[sa_orm.Session]:
    with sa_orm.Session(engine) as session:
        yield session


@contextlib.contextmanager
def _recorded(session: sa_orm.Session) -> t.Iterator[list[sa_orm.ORMExecuteState]]:
    """The ``ORMExecuteState`` objects of what runs inside, as the
    ``do_orm_execute`` event sees them.
    """
    states: list[sa_orm.ORMExecuteState] = []
    record = states.append  # one object, for remove() to find
    sa.event.listen(session, "do_orm_execute", record)
    try:
        yield states
    finally:
        sa.event.remove(session, "do_orm_execute", record)


def _capture(session: sa_orm.Session, statement: t.Any) -> sa_orm.ORMExecuteState:
    """Execute ``statement``; return its ``ORMExecuteState``."""
    with _recorded(session) as states:
        session.execute(statement)
    return states[0]


def _same(got: t.Sequence[t.Any], expected: t.Sequence[t.Any]) -> bool:
    """Whether two sequences of SQL expressions are the same SQL, in order."""
    return len(got) == len(expected) and all(
        a.compare(b) for a, b in zip(got, expected, strict=True)
    )


# -- statements -----------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "locks"),
    [
        (sa.select(items), False),
        (sa.select(items).with_for_update(), True),
        (sa.select(items).with_for_update(read=True), True),
        (sa.select(items).with_for_update(skip_locked=True, of=items.c.x), True),
    ],
    ids=["plain", "for_update", "for_share", "skip_locked"],
)
def test_select_for_update(statement: sa.Select[t.Any], locks: bool) -> None:
    with _seam("select_for_update", "None without with_for_update(), else not"):
        assert (_sqla.select_for_update(statement) is not None) is locks


def test_select_raw_columns() -> None:
    nextval = sa.func.nextval("s")
    with _seam("select_raw_columns", "the columns as given, functions as is"):
        raw = _sqla.select_raw_columns(sa.select(nextval, items.c.x))
        assert len(raw) == 2
        assert raw[0] is nextval
        assert raw[1] is items.c.x
        # select(Model): the mapped table, annotated with its entity.
        (entity,) = _sqla.select_raw_columns(sa.select(Parent))
        assert entity.compare(Parent.__table__)
        assert entity.entity_namespace is Parent


@pytest.mark.parametrize(
    ("statement", "terms"),
    [
        (sa.select(items), ()),
        (sa.select(items).where(items.c.x == 1, items.c.y > 2), (1, 2)),
        (sa.select(items).where(items.c.x == 1).where(items.c.y > 2), (1, 2)),
        (sa.update(items).where(items.c.x == 1).values(y=3), (1,)),
        (sa.delete(items).where(items.c.x == 1, items.c.y > 2), (1, 2)),
        (sa.insert(items).values(x=1), ()),
        (sa.text("SELECT 1"), ()),
    ],
    ids=["none", "where_a_b", "chained", "update", "delete", "insert", "text"],
)
def test_where_criteria(statement: t.Any, terms: tuple[int, ...]) -> None:
    expected = [{1: items.c.x == 1, 2: items.c.y > 2}[term] for term in terms]
    with _seam("where_criteria", "the WHERE terms in order, () for an INSERT"):
        assert _same(_sqla.where_criteria(statement), expected)


@pytest.mark.parametrize(
    ("statement", "keys"),
    [
        (sa.update(items).values(x=1), {"x"}),
        (sa.update(items).values({items.c.x: 1, "y": 2}), {"x", "y"}),
        (sa.update(Parent).values(name="n"), {"name"}),
        (sa.update(Parent).values({Parent.name: "n"}), {"name"}),
        (sa.insert(items).values(x=1, y=2), {"x", "y"}),
        (sa.update(items), set()),
    ],
    ids=["update", "columns", "orm_update", "orm_attribute", "insert", "none"],
)
def test_dml_set_keys(statement: sa.Update | sa.Insert, keys: set[str]) -> None:
    with _seam("dml_set_keys", f"the keys {sorted(keys)}"):
        assert _sqla.dml_set_keys(statement) == keys


def test_dml_set_keys_ordered_values() -> None:
    with _seam("dml_set_keys", "the keys of ordered_values() as of values()"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            statement = sa.update(items).ordered_values((items.c.x, 1), ("y", 2))
        # 2.1.x keeps ordered_values(), without a deprecation (yet): if a
        # release deprecates or drops it, dml_set_keys needs another look.
        assert [str(w.message) for w in caught] == []
        ordered = vars(statement).get("_ordered_values")
        if SA_20:
            # 2.0 keeps ordered_values() apart, in _ordered_values.
            assert statement._values is None
            assert [c for c, _ in ordered or ()] == [items.c.x, "y"]
        else:
            # 2.1 keeps both in _values, in the given order.
            assert ordered is None
            assert list(statement._values or {}) == [items.c.x, "y"]
        assert _sqla.dml_set_keys(statement) == {"x", "y"}


@pytest.mark.parametrize(
    ("statement", "values"),
    [
        (sa.insert(items).values(x=1, y=sa.bindparam("y_value", 5)), {"x": 1, "y": 5}),
        (sa.insert(items).values({items.c.x: 1}), {"x": 1}),
        (sa.insert(Parent).values(name="n"), {"name": "n"}),
        (sa.insert(items), {}),
        (sa.insert(items).values([{"x": 1}, {"x": 2}]), {}),
    ],
    ids=["kwargs", "columns", "orm", "none", "multi"],
)
def test_insert_values(statement: sa.Insert, values: dict[str, t.Any]) -> None:
    with _seam("insert_values", f"{values!r}, bound values unwrapped"):
        assert _sqla.insert_values(statement) == values


@pytest.mark.parametrize(
    ("statement", "rows"),
    [
        (sa.insert(items).values([{"x": 1}, {"x": 2}]), [{"x": 1}, {"x": 2}]),
        (sa.insert(items).values([(1, 2, 3), (4, 5, 6)]), [(1, 2, 3), (4, 5, 6)]),
        (sa.insert(items).values(x=1), []),
        (sa.insert(items), []),
        pytest.param(
            sa.insert(items).values([{"x": 1}]).values([{"x": 2}]),
            [{"x": 1}, {"x": 2}],
        ),
    ],
    ids=["dicts", "tuples", "single", "none", "chained"],
)
def test_insert_multi_values(statement: sa.Insert, rows: list[t.Any]) -> None:
    with _seam("insert_multi_values", f"the rows as given, {rows!r}"):
        assert _sqla.insert_multi_values(statement) == rows


def test_with_multi_values(engine: sa.Engine) -> None:
    statement = (
        sa.insert(items)
        .values([{"id": 1, "x": 1}, {"id": 2, "x": 2}])
        .returning(items.c.id, items.c.x)
    )
    with _seam("with_multi_values", "a copy with other rows, RETURNING kept"):
        copy = _sqla.with_multi_values(statement, [{"id": 3, "x": 3}])
        assert copy is not statement
        assert _sqla.insert_multi_values(copy) == [{"id": 3, "x": 3}]
        assert _sqla.insert_multi_values(statement) == [
            {"id": 1, "x": 1},
            {"id": 2, "x": 2},
        ]
        with engine.begin() as connection:
            assert [tuple(r) for r in connection.execute(copy)] == [(3, 3)]
            assert [tuple(r) for r in connection.execute(statement)] == [(1, 1), (2, 2)]


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (sa.bindparam("p", 5), 5),
        (sa.bindparam("p", callable_=lambda: 7), 7),
        (sa.literal(3), 3),
        (4, 4),
        (None, None),
    ],
    ids=["bindparam", "callable", "literal", "int", "none"],
)
def test_bound_value(value: t.Any, plain: t.Any) -> None:
    with _seam("bound_value", f"{plain!r}"):
        assert _sqla.bound_value(value) == plain
    expression = sa.func.now()
    with _seam("bound_value", "a SQL expression as is"):
        assert _sqla.bound_value(expression) is expression


@pytest.mark.parametrize(
    ("statement", "explicit"),
    [
        (sa.select(items), False),
        (sa.select(items.c.x, tags.c.id), False),
        (sa.select(items).join(tags), True),
        (sa.select(items).join_from(items, tags), True),
        (sa.select(items.c.x).select_from(items), True),
        (sa.select(Parent).join(Parent.children), True),
        (sa.update(items).values(x=1), False),
        (sa.text("SELECT 1"), False),
    ],
    ids=["plain", "implicit", "join", "join_from", "select_from", "orm", "dml", "text"],
)
def test_has_explicit_froms(statement: t.Any, explicit: bool) -> None:
    with _seam("has_explicit_froms", f"{explicit} for this statement"):
        assert _sqla.has_explicit_froms(statement) is explicit


def test_distinct_on_plain() -> None:
    with _seam("distinct_on", "() without DISTINCT ON"):
        assert _sqla.distinct_on(sa.select(items)) == ()
        assert _sqla.distinct_on(sa.select(items).distinct()) == ()


def test_distinct_on_by_distinct_arguments() -> None:
    with _seam("distinct_on", "the expressions of select.distinct(*expr)"):
        if SA_20:
            statement = sa.select(items).distinct(items.c.x)
        else:
            # 2.1 deprecates distinct(*expr) for postgresql.distinct_on().
            with pytest.warns(sa_exc.SADeprecationWarning, match="distinct_on"):
                statement = sa.select(items).distinct(items.c.x)
        assert _same(_sqla.distinct_on(statement), [items.c.x])


def test_distinct_on_by_extension() -> None:
    # Typed as Any: neither exists in 2.0's stubs.
    postgresql: t.Any = importlib.import_module("sqlalchemy.dialects.postgresql")
    select: t.Any = sa.select(items)
    with _seam("distinct_on", "the expressions of postgresql.distinct_on()"):
        if SA_20:
            # The extension is new in 2.1: 2.0 only has distinct(*expr).
            assert not hasattr(postgresql, "distinct_on")
        else:
            statement = select.ext(postgresql.distinct_on(items.c.x))
            assert _sqla.is_distinct(statement)
            assert _same(_sqla.distinct_on(statement), [items.c.x])


@pytest.mark.parametrize(
    ("statement", "distinct"),
    [
        (sa.select(items), False),
        (sa.select(items).distinct(), True),
        (sa.select(items.c.x).distinct().order_by(items.c.x), True),
    ],
    ids=["plain", "distinct", "ordered"],
)
def test_is_distinct(statement: sa.Select[t.Any], distinct: bool) -> None:
    with _seam("is_distinct", f"{distinct}"):
        assert _sqla.is_distinct(statement) is distinct


def test_group_by_and_having() -> None:
    grouped = sa.select(items.c.x, sa.func.count()).group_by(items.c.x, items.c.y)
    with _seam("group_by", "the GROUP BY terms in order, () without"):
        assert _same(_sqla.group_by(grouped), [items.c.x, items.c.y])
        assert _sqla.group_by(sa.select(items)) == ()
    with _seam("has_having", "True with .having(), else False"):
        assert _sqla.has_having(grouped.having(sa.func.count() > 1)) is True
        assert _sqla.has_having(grouped) is False


def test_order_by() -> None:
    statement = sa.select(items).order_by(items.c.x, items.c.y.desc())
    with _seam("order_by", "the ORDER BY terms in order, () without"):
        assert _same(_sqla.order_by(statement), [items.c.x, items.c.y.desc()])
        assert _sqla.order_by(statement.order_by(None)) == ()
        assert _sqla.order_by(sa.select(items)) == ()


def test_limit_and_offset_clause() -> None:
    statement = sa.select(items).limit(5).offset(3)
    with _seam("limit_clause", "the LIMIT's bound value, None without"):
        assert t.cast(sa.BindParameter[int], _sqla.limit_clause(statement)).value == 5
        assert _sqla.limit_clause(sa.select(items)) is None
        assert _sqla.limit_clause(statement.limit(None)) is None
    with _seam("offset_clause", "the OFFSET's bound value, None without"):
        assert t.cast(sa.BindParameter[int], _sqla.offset_clause(statement)).value == 3
        assert _sqla.offset_clause(sa.select(items)) is None


_correlated = sa.select(tags.c.id).where(tags.c.item_id == items.c.id)


@pytest.mark.parametrize(
    "subquery",
    [
        _correlated,
        _correlated.correlate(None),
        _correlated.correlate(items),
        pytest.param(
            _correlated.correlate_except(tags),
        ),
    ],
    ids=["default", "correlate_none", "correlate_table", "correlate_except"],
)
def test_correlates(subquery: sa.Select[t.Any]) -> None:
    # What SQLAlchemy does: a correlated subquery leaves "items" out of its
    # own FROM list.
    outer = sa.select(items.c.id).where(items.c.id.in_(subquery.scalar_subquery()))
    correlated = "FROM tags, items" not in " ".join(str(outer).split())
    with _seam("correlates", f"{correlated}, as SQLAlchemy renders it"):
        assert _sqla.correlates(subquery) is correlated


_label = items.c.x.label("n")


def _first_order_term(order: t.Any) -> t.Any:
    """The first ORDER BY term of a SELECT of ``_label``, under its ASC or
    DESC as the scatter unwraps them.
    """
    (term,) = _sqla.order_by(sa.select(_label).order_by(order))
    return term.element if isinstance(term, sa.UnaryExpression) else term


@pytest.mark.parametrize(
    ("order", "label"),
    [("n", "n"), (sa.desc("n"), "n"), (items.c.x, None), (_label, None)],
    ids=["name", "desc_name", "column", "label"],
)
def test_label_reference_target(order: t.Any, label: str | None) -> None:
    with _seam("label_reference_target", f"the label name {label!r}"):
        expression, name = _sqla.label_reference_target(_first_order_term(order))
        assert name == label
        if order is items.c.x:
            assert expression is items.c.x
        if order is _label:
            assert expression is _label


def test_label_reference_target_of_a_descending_label() -> None:
    # order_by(label.desc()) puts the DESC inside the label reference: a
    # caller looking for DESC must unwrap the reference first.
    with _seam("label_reference_target", "the DESC of the label"):
        expression, name = _sqla.label_reference_target(
            _first_order_term(_label.desc())
        )
        assert name is None
        assert isinstance(expression, sa.UnaryExpression)
        assert expression.element is _label


@pytest.mark.parametrize(
    ("element", "annotated"),
    [
        ((Parent.id == 1).left, True),
        (Parent.id.expression, True),
        (sa.select(Parent.name).selected_columns[0], True),
        (Parent.__table__.c.id, False),
        (items.c.x, False),
        ((items.c.x == 1).left, False),
    ],
    ids=["orm_criterion", "attribute", "orm_select", "mapped_table", "table", "core"],
)
def test_is_annotated(element: t.Any, annotated: bool) -> None:
    with _seam("is_annotated", f"{annotated}"):
        assert _sqla.is_annotated(element) is annotated


# -- results --------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "unique"),
    [
        (sa.select(Parent).options(sa_orm.joinedload(Parent.children)), True),
        (sa.select(Child).options(sa_orm.joinedload(Child.parent)), False),
        (sa.select(Parent), False),
        (sa.select(items), False),
    ],
    ids=["joined_collection", "joined_scalar", "entity", "core"],
)
def test_requires_unique(
    session: sa_orm.Session, statement: sa.Select[t.Any], unique: bool
) -> None:
    session.add(Parent(children=[Child(), Child()]))
    session.flush()
    result = session.execute(statement)
    with _seam("requires_unique", f"{unique}, as SQLAlchemy insists"):
        assert _sqla.requires_unique(result) is unique
        if unique:
            # The reason: SQLAlchemy refuses the result without unique().
            with pytest.raises(sa_exc.InvalidRequestError, match=r"unique\(\)"):
                result.all()
        result.close()


@pytest.mark.parametrize("mark", [True, False], ids=["marked", "unmarked"])
def test_mark_single_entity(session: sa_orm.Session, mark: bool) -> None:
    session.add_all([Parent(name="a"), Parent(name="b")])
    session.flush()

    def merge(state: sa_orm.ORMExecuteState) -> t.Any:
        # As the scatter does: the shard statement has a sort column more,
        # so its result is not a one-entity result; the merge cuts it off.
        select = t.cast("sa.Select[t.Any]", state.statement)
        statement = select.add_columns(Parent.name.label("_sort"))
        frozen = state.invoke_statement(statement=statement).freeze()
        rows: list[t.Any] = [tuple(row)[:1] for row in frozen()]
        merged = frozen().columns(0).freeze().with_new_rows(rows)()
        if mark:
            _sqla.mark_single_entity(merged)
        return merged

    sa.event.listen(session, "do_orm_execute", merge, retval=True)
    with _seam("mark_single_entity", "Query to yield ORM objects, not rows"):
        loaded: list[t.Any] = session.query(Parent).order_by(Parent.name).all()
        if mark:
            assert [p.name for p in loaded] == ["a", "b"]
        else:
            # Without the mark, a legacy Query yields one-column rows.
            assert [type(p) for p in loaded] == [sa.Row, sa.Row]
        scalars = session.execute(sa.select(Parent)).scalars().all()
        assert all(isinstance(p, Parent) for p in scalars)


# -- the ORM --------------------------------------------------------------


def test_get_clause(session: sa_orm.Session) -> None:
    session.add(Parent(id=7))
    session.commit()
    session.expunge_all()
    mapper = sa.inspect(Parent)
    with _seam("get_clause", "the criterion of session.get(), params by column"):
        clause, params = _sqla.get_clause(mapper)
        (column,) = mapper.primary_key
        assert list(params) == [column]
        assert isinstance(params[column], sa.BindParameter)
        with _recorded(session) as states:
            assert session.get(Parent, 7) is not None
        (state,) = states
        (criterion,) = _sqla.where_criteria(state.statement)
        if SA_20:
            # 2.0 puts an annotated copy of the clause in the statement.
            assert criterion.compare(clause)
        else:
            assert criterion is clause
        assert state.parameters == {params[column].key: 7}


@pytest.mark.parametrize(
    ("statement", "shard"),
    [
        (sa.select(Parent).options(set_shard_id("east")), "east"),
        (
            sa.select(Parent).options(
                sa_orm.selectinload(Parent.children), set_shard_id("west")
            ),
            "west",
        ),
        (sa.select(Parent).options(sa_orm.selectinload(Parent.children)), None),
        (sa.select(Parent), None),
    ],
    ids=["option", "among_others", "other_option", "none"],
)
def test_set_shard_option(
    session: sa_orm.Session, statement: sa.Select[t.Any], shard: str | None
) -> None:
    with _seam("set_shard_option", f"the set_shard_id shard {shard!r}"):
        assert _sqla.set_shard_option(_capture(session, statement)) == shard


@pytest.mark.parametrize(
    ("statement", "token"),
    [
        (sa.select(Parent).execution_options(identity_token="east"), "east"),
        (
            sa.update(Parent).values(name="n").execution_options(identity_token="east"),
            "east",
        ),
        (sa.delete(Parent).execution_options(identity_token="east"), "east"),
        (sa.select(Parent), None),
        (sa.update(Parent).values(name="n"), None),
        (sa.insert(Parent).values(name="n"), None),
    ],
    ids=["select", "update", "delete", "plain_select", "plain_update", "insert"],
)
def test_identity_token_option(
    session: sa_orm.Session, statement: t.Any, token: str | None
) -> None:
    with _seam("identity_token_option", f"the identity_token {token!r}"):
        assert _sqla.identity_token_option(_capture(session, statement)) == token


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param(sa.select(Parent), id="orm_select"),
        pytest.param(
            sa.select(Parent).execution_options(autoflush=False), id="orm_select_off"
        ),
        pytest.param(sa.update(Parent).values(name="u"), id="orm_update"),
        pytest.param(
            sa.update(Parent).values(name="u").execution_options(autoflush=False),
            id="orm_update_off",
        ),
        pytest.param(sa.delete(Parent).where(Parent.id == 0), id="orm_delete"),
        pytest.param(sa.insert(Parent).values(name="i"), id="orm_insert"),
        *(
            pytest.param(statement, id=name)
            for name, statement in [
                ("core_select", sa.select(items)),
                ("core_update", sa.update(items).values(x=1)),
                ("core_insert", sa.insert(items).values(x=1)),
                ("text", sa.text("SELECT 1")),
            ]
        ),
    ],
)
def test_autoflush_option(session: sa_orm.Session, statement: t.Any) -> None:
    pending = Parent(name="pending")
    session.add(pending)
    state = _capture(session, statement)
    flushed = pending not in session.new
    if not state.is_orm_statement:
        # SQLAlchemy 2.1 autoflushes before Core statements and text(); 2.0
        # does not. Flask-Partition flushes before them on both.
        assert flushed is not SA_20
        flushed = True
    with _seam("autoflush_option", f"{flushed}, as SQLAlchemy 2.1 autoflushes"):
        assert _sqla.autoflush_option(state) is flushed


def test_is_flushing(session: sa_orm.Session) -> None:
    seen: dict[str, bool] = {}

    @sa.event.listens_for(session, "before_flush")
    def before_flush(s: sa_orm.Session, context: t.Any, instances: t.Any) -> None:
        seen["before_flush"] = _sqla.is_flushing(s)

    @sa.event.listens_for(session, "after_flush")
    def after_flush(s: sa_orm.Session, context: t.Any) -> None:
        seen["after_flush"] = _sqla.is_flushing(s)

    with _seam("is_flushing", "True inside flush(), False outside"):
        assert _sqla.is_flushing(session) is False
        session.add(Parent())
        session.flush()
        assert seen == {"before_flush": True, "after_flush": True}
        assert _sqla.is_flushing(session) is False


def test_autoflush(session: sa_orm.Session) -> None:
    pending = Parent()
    session.add(pending)
    with _seam("autoflush", "a flush, unless autoflush is off"):
        with session.no_autoflush:
            _sqla.autoflush(session)
        assert pending in session.new
        _sqla.autoflush(session)
        assert pending not in session.new
        assert sa.inspect(pending).persistent


def test_is_clean(session: sa_orm.Session) -> None:
    with _seam("is_clean", "True with nothing to flush"):
        assert _sqla.is_clean(session) is True
        parent = Parent(name="a")
        session.add(parent)
        assert _sqla.is_clean(session) is False
        session.flush()
        assert _sqla.is_clean(session) is True
        parent.name = "b"
        assert _sqla.is_clean(session) is False
        session.flush()
        session.delete(parent)
        assert _sqla.is_clean(session) is False


def test_shard_of_state_loaded(session: sa_orm.Session) -> None:
    session.add(Parent(id=1))
    session.commit()
    session.expunge_all()
    with _seam("shard_of_state", "the identity token of a loaded instance"):
        plain = session.execute(sa.select(Parent)).scalar_one()
        assert _sqla.shard_of_state(sa.inspect(plain)) is None
        session.expunge_all()
        east = (
            session.execute(sa.select(Parent).execution_options(identity_token="east"))
            .scalars()
            .one()
        )
        state = sa.inspect(east)
        assert state.key is not None
        assert state.key[2] == "east"
        assert _sqla.shard_of_state(state) == "east"


def test_set_identity_token(session: sa_orm.Session) -> None:
    pending = Parent(id=2)
    state = sa.inspect(pending)
    with _seam("shard_of_state", "None for a pending instance without token"):
        assert _sqla.shard_of_state(state) is None
    with _seam("set_identity_token", "the shard of the pending instance"):
        _sqla.set_identity_token(state, "west")
        assert _sqla.shard_of_state(state) == "west"
        session.add(pending)
        session.flush()
        # The identity key of the flushed row carries the token.
        assert state.key == (Parent, (2,), "west")
        assert _sqla.shard_of_state(state) == "west"


def test_registry_attributes() -> None:
    class Mapped(sa_orm.DeclarativeBase):
        type_annotation_map: t.ClassVar[dict[t.Any, t.Any]] = {str: sa.String(50)}

    with _seam("REGISTRY_ATTRIBUTES", "where a base keeps its registry"):
        registry = Mapped.registry
        holders = {name for name, value in vars(Mapped).items() if value is registry}
        assert holders == {"registry", *_sqla.REGISTRY_ATTRIBUTES}
        # Left out, the rebuilt base gets a registry of its own.
        body = {k: v for k, v in vars(Mapped).items() if k not in holders}
        body.pop("__dict__", None)
        body.pop("__weakref__", None)
        metaclass: t.Any = type(Mapped)
        rebuilt = metaclass("Rebuilt", Mapped.__bases__, body)
        assert rebuilt.registry is not registry
        assert repr(rebuilt.registry.type_annotation_map[str]) == "String(length=50)"


# -- the session's transaction ---------------------------------------------


def test_current_transaction(session: sa_orm.Session) -> None:
    in_flush: list[sa_orm.SessionTransaction | None] = []

    @sa.event.listens_for(session, "after_flush")
    def after_flush(s: sa_orm.Session, context: t.Any) -> None:
        in_flush.append(_sqla.current_transaction(s))

    with _seam("current_transaction", "the innermost transaction, or None"):
        assert _sqla.current_transaction(session) is None
        root = session.begin()
        assert _sqla.current_transaction(session) is root
        nested = session.begin_nested()
        assert _sqla.current_transaction(session) is nested
        assert nested.nested and nested.parent is root
        assert session.get_transaction() is root
        session.add(Parent())
        session.flush()
        # The flush runs in a subtransaction of the savepoint.
        (flush,) = in_flush
        assert flush is not None
        assert flush not in (root, nested)
        assert flush.parent is nested
        nested.commit()
        assert _sqla.current_transaction(session) is root
        session.commit()
        assert _sqla.current_transaction(session) is None


def test_transaction_levels(session: sa_orm.Session) -> None:
    with _seam("transaction_levels", "the transactions, innermost first"):
        assert list(_sqla.transaction_levels(session)) == []
        root = session.begin()
        assert list(_sqla.transaction_levels(session)) == [root]
        nested = session.begin_nested()
        inner = session.begin_nested()
        assert list(_sqla.transaction_levels(session)) == [inner, nested, root]
        session.rollback()
        assert list(_sqla.transaction_levels(session)) == []


def test_transaction_connections(session: sa_orm.Session, engine: sa.Engine) -> None:
    session.execute(sa.select(items))
    transaction = session.get_transaction()
    assert transaction is not None
    connection = session.connection()
    with _seam(
        "transaction_connections",
        "(connection, transaction, should_commit, autoclose) by engine and"
        " by connection",
    ):
        connections = _sqla.transaction_connections(transaction)
        assert set(connections) == {engine, connection}
        entry = connections[engine]
        assert connections[connection] is entry
        assert entry == (connection, connection.get_transaction(), True, True)


def test_forget_connection(session: sa_orm.Session, engine: sa.Engine) -> None:
    session.execute(sa.insert(items).values(id=1))
    transaction = session.get_transaction()
    assert transaction is not None
    connection = session.connection()
    with _seam("forget_connection", "both keys gone, the connection left open"):
        _sqla.forget_connection(transaction, engine, connection)
        assert _sqla.transaction_connections(transaction) == {}
        session.commit()
        # SQLAlchemy's commit no longer sees it: still in its transaction.
        assert connection.in_transaction()
        assert not connection.closed
    connection.rollback()
    connection.close()


@pytest.mark.parametrize("skip", [True, False], ids=["skipped", "control"])
def test_skip_commit(tmp_path: pathlib.Path, skip: bool) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    try:
        with sa_orm.Session(engine) as session:
            session.execute(sa.insert(items).values(id=1))
            transaction = session.get_transaction()
            assert transaction is not None
            with _seam("skip_commit", "every should_commit flag False"):
                if skip:
                    _sqla.skip_commit(transaction)
                flags = {
                    e[2] for e in _sqla.transaction_connections(transaction).values()
                }
                assert flags == {not skip}
            session.commit()
        with engine.connect() as connection:
            count = connection.execute(sa.select(sa.func.count()).select_from(items))
            with _seam("skip_commit", "SQLAlchemy's commit to leave the row out"):
                assert count.scalar_one() == (0 if skip else 1)
    finally:
        engine.dispose()


def test_prepare_and_is_prepared(session: sa_orm.Session) -> None:
    commits: list[sa_orm.Session] = []
    sa.event.listen(session, "before_commit", commits.append)
    transaction = session.begin()
    pending = Parent(name="p")
    session.add(pending)
    with _seam("is_prepared", "False before prepare()"):
        assert _sqla.is_prepared(transaction) is False
    with _seam("prepare", "before_commit and the flush, then PREPARED"):
        _sqla.prepare(transaction)
        assert commits == [session]
        assert pending not in session.new
    with _seam("is_prepared", "True after prepare()"):
        assert _sqla.is_prepared(transaction) is True
    with _seam("prepare", "commit() not to run before_commit again"):
        session.commit()
        assert commits == [session]
    assert session.scalars(sa.select(Parent.name)).all() == ["p"]


class _CountingTransaction(sa_orm.SessionTransaction):
    commits = 0

    def commit(self, _to_root: bool = False) -> None:
        if self.parent is None:
            type(self).commits += 1
        super().commit(_to_root)


def test_replace_transaction_class(session: sa_orm.Session) -> None:
    @sa.event.listens_for(session, "after_transaction_create")
    def replace(s: sa_orm.Session, transaction: sa_orm.SessionTransaction) -> None:
        if transaction.parent is None:
            _sqla.replace_transaction_class(transaction, _CountingTransaction)

    _CountingTransaction.commits = 0
    with _seam("replace_transaction_class", "the new class's commit() to run"):
        session.add(Parent())
        session.commit()
        assert _CountingTransaction.commits == 1
        session.begin()
        assert type(session.get_transaction()) is _CountingTransaction
        session.begin_nested()
        assert type(_sqla.current_transaction(session)) is sa_orm.SessionTransaction
        session.commit()
        assert _CountingTransaction.commits == 2


def test_replace_transaction_class_refuses_other_classes(
    session: sa_orm.Session,
) -> None:
    class Other:
        pass

    transaction = session.begin()
    with _seam("replace_transaction_class", "a TypeError for a non-subclass"):
        with pytest.raises(TypeError) as info:
            _sqla.replace_transaction_class(
                transaction, t.cast("type[sa_orm.SessionTransaction]", Other)
            )
        assert str(info.value) == (
            "'Other' does not subclass 'SessionTransaction'; cannot replace the"
            " transaction's class."
        )
        assert type(transaction) is sa_orm.SessionTransaction


# -- overridden private methods ---------------------------------------------


def _sqlalchemy_bases(cls: type) -> list[type]:
    return [c for c in cls.__mro__ if c.__module__.startswith("sqlalchemy.")]


def _check_override(cls: type, name: str, parameters: tuple[str, ...]) -> None:
    owners = [c for c in _sqlalchemy_bases(cls) if name in vars(c)]
    assert owners, f"no SQLAlchemy base of {cls.__name__} defines {name}()"
    for owner in owners:
        signature = inspect.signature(vars(owner)[name])
        names = list(signature.parameters)[1:]  # after self
        # Our overrides pass these on positionally: same names, same places.
        assert names[: len(parameters)] == list(parameters), (
            f"{owner.__name__}.{name}{signature}"
        )
        required = [
            p.name
            for p in list(signature.parameters.values())[1 + len(parameters) :]
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        assert required == [], f"{owner.__name__}.{name}{signature}"


@pytest.mark.parametrize(("name", "parameters"), list(_sqla.SESSION_OVERRIDES.items()))
def test_session_overrides(name: str, parameters: tuple[str, ...]) -> None:
    with _seam("SESSION_OVERRIDES", f"Session.{name}{parameters}"):
        assert name in vars(sa_orm.Session)
        _check_override(PartitionSession, name, parameters)


@pytest.mark.parametrize(
    ("name", "parameters"), list(_sqla.TRANSACTION_OVERRIDES.items())
)
def test_transaction_overrides(name: str, parameters: tuple[str, ...]) -> None:
    with _seam("TRANSACTION_OVERRIDES", f"SessionTransaction.{name}{parameters}"):
        assert name in vars(sa_orm.SessionTransaction)
        _check_override(TwoPhaseTransaction, name, parameters)


@pytest.mark.parametrize(
    ("name", "parameters"), list(_sqla.SHARDED_SESSION_OVERRIDES.items())
)
def test_sharded_session_overrides(name: str, parameters: tuple[str, ...]) -> None:
    with _seam("SHARDED_SESSION_OVERRIDES", f"ShardedSession.{name}{parameters}"):
        assert name in vars(ShardedSession)
        _check_override(PartitionSession, name, parameters)


@pytest.mark.parametrize(
    ("owner", "name", "parameters"),
    [(o, n, p) for (o, n), p in _sqla.PRIVATE_PARAMETERS.items()],
)
def test_private_parameters(
    owner: type, name: str, parameters: tuple[str, ...]
) -> None:
    with _seam("PRIVATE_PARAMETERS", f"{owner.__name__}.{name}{parameters}"):
        signature = inspect.signature(vars(owner)[name])
        assert set(parameters) <= set(signature.parameters)


#: Private SQLAlchemy methods our classes override without a table entry.
UNLISTED_OVERRIDES: dict[str, str] = {}


@pytest.mark.parametrize(
    ("cls", "table"),
    [
        (
            PartitionSession,
            {**_sqla.SESSION_OVERRIDES, **_sqla.SHARDED_SESSION_OVERRIDES},
        ),
        (TwoPhaseTransaction, _sqla.TRANSACTION_OVERRIDES),
    ],
    ids=["session", "transaction"],
)
def test_overrides_are_listed(cls: type, table: t.Mapping[str, t.Any]) -> None:
    """Every private SQLAlchemy method our classes override is in a table."""
    bases = _sqlalchemy_bases(cls)
    found = {
        f"{cls.__name__}.{name}": (
            f"{cls.__name__}.{name} overrides a private SQLAlchemy method:"
            " list it in flask_partition/_sqla.py with the parameters it uses."
        )
        for name in vars(cls)
        if _is_private(name)
        and name not in table
        and any(name in vars(base) for base in bases)
    }
    known = {
        key: reason
        for key, reason in UNLISTED_OVERRIDES.items()
        if key.startswith(f"{cls.__name__}.")
    }
    _expect_known(found, known, "UNLISTED_OVERRIDES")


# -- nobody else reads SQLAlchemy's private API -----------------------------

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "flask_partition"
SEAM = PACKAGE / "_sqla.py"
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p != SEAM)

#: Underscored names that are public API, or not SQLAlchemy's.
ALLOWED = {
    "_get_current_object": "Werkzeug's documented way to unwrap a LocalProxy",
    "_getframe": "sys._getframe, the standard way to reach a caller's frame",
    "_mapping": "Row._mapping, public API of SQLAlchemy's Row",
    "_asdict": "Row._asdict(), public API of SQLAlchemy's Row",
    "_fields": "Row._fields, public API of SQLAlchemy's Row",
    "_t": "Row._t, public API of SQLAlchemy's Row",
    "_tuple": "Row._tuple(), public API of SQLAlchemy's Row",
}

#: Reads of SQLAlchemy's private API outside _sqla.py, reported to the lead
#: (who moves them), by module and expression.
KNOWN_VIOLATIONS: dict[str, str] = {}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _trees() -> t.Iterator[ast.AST]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield ast.parse(path.read_text(), str(path))


def _sqlalchemy_private_names() -> set[str]:
    """The private names of SQLAlchemy's classes: SQLAlchemy's, even where
    we define one too (an override), so reading them through anything but
    ``self`` is a use.
    """
    names: set[str] = set()
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").partition(".")[0] != "sqlalchemy":
            continue
        for value in list(vars(module).values()):
            if inspect.isclass(value) and value.__module__.startswith("sqlalchemy."):
                names.update(name for name in dir(value) if _is_private(name))
    return names


def _own_private_names() -> frozenset[str]:
    """The private names Flask-Partition defines or assigns itself."""
    names: set[str] = set()
    for tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    sqlalchemy = _sqlalchemy_private_names()
    return frozenset(
        name
        for name in names
        if _is_private(name) and name not in sqlalchemy and not name.startswith("_sa_")
    )


OWN = _own_private_names()


def _exempt(value: ast.expr) -> bool:
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "super"
    )


def _private_reads(path: pathlib.Path) -> t.Iterator[tuple[int, str]]:
    """Line and expression of each read of a private name that is not ours."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            if _is_private(name) and not _exempt(node.value):
                yield node.lineno, f"{ast.unparse(node.value)}.{name}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            arguments = node.args
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and (
                len(arguments) > 1
                and isinstance(arguments[1], ast.Constant)
                and isinstance(arguments[1].value, str)
                and _is_private(arguments[1].value)
                and not _exempt(arguments[0])
            ):
                name = arguments[1].value
                yield node.lineno, f"{ast.unparse(arguments[0])}.{name}"
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if module.split(".")[0] == "sqlalchemy":
                for alias in node.names:
                    if any(_is_private(p) for p in [*module.split("."), alias.name]):
                        yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sqlalchemy" and any(_is_private(p) for p in parts):
                    yield node.lineno, alias.name


@pytest.mark.parametrize(
    "path", MODULES, ids=[str(p.relative_to(PACKAGE.parent)) for p in MODULES]
)
def test_no_private_sqlalchemy_api_outside_sqla(path: pathlib.Path) -> None:
    module = path.relative_to(PACKAGE.parent).as_posix()
    lines: dict[str, list[int]] = {}
    for line, expression in _private_reads(path):
        if expression.rpartition(".")[2] not in OWN | ALLOWED.keys():
            lines.setdefault(expression, []).append(line)
    found = {
        f"{module}: {expression}": (
            f"{module}:{','.join(map(str, sorted(at)))} reads {expression!r}, a"
            " private attribute of a SQLAlchemy object: move it into"
            " flask_partition/_sqla.py."
        )
        for expression, at in lines.items()
    }
    known = {
        key: reason
        for key, reason in KNOWN_VIOLATIONS.items()
        if key.startswith(f"{module}: ")
    }
    _expect_known(found, known, "KNOWN_VIOLATIONS")


# -- added with the scatter and session fixes --------------------------------


def test_syntax_extensions() -> None:
    with _seam("syntax_extensions", "the clauses Select.ext() added, () otherwise"):
        assert _sqla.syntax_extensions(sa.select(items)) == ()
        if not SA_20:
            postgresql: t.Any = importlib.import_module(
                "sqlalchemy.dialects.postgresql"
            )
            select: t.Any = sa.select(items)
            extended = select.ext(postgresql.distinct_on(items.c.x))
            assert len(_sqla.syntax_extensions(extended)) == 1


def test_fetch_clause() -> None:
    with _seam("fetch_clause", "the FETCH FIRST clause, None without one"):
        assert _sqla.fetch_clause(sa.select(items)) is None
        assert _sqla.fetch_clause(sa.select(items).limit(3)) is None
        assert _sqla.fetch_clause(sa.select(items).fetch(3)) is not None


def test_strip_label_reference() -> None:
    label = items.c.x.label("n")
    with _seam("strip_label_reference", "the DESC inside order_by(label.desc())"):
        (term,) = _sqla.order_by(sa.select(label).order_by(label.desc()))
        stripped = _sqla.strip_label_reference(term)
        assert isinstance(stripped, sa.UnaryExpression)
        assert stripped.element is label
        assert _sqla.strip_label_reference(items.c.x) is items.c.x


def test_plain_identity_lookup(session: sa_orm.Session) -> None:
    parent = Parent(id=7, name="p")
    session.add(parent)
    session.flush()
    mapper = sa.inspect(Parent)
    with _seam("plain_identity_lookup", "Session's own identity-map lookup"):
        found = _sqla.plain_identity_lookup(session, mapper, (7,))
        assert found is parent
        assert _sqla.plain_identity_lookup(session, mapper, (8,)) is None


def test_every_seam_function_has_a_test() -> None:
    """A new function in _sqla.py comes with its test here."""
    text = pathlib.Path(__file__).read_text()
    names = [
        name
        for name, value in vars(_sqla).items()
        if not name.startswith("_")
        and (callable(value) or name.isupper())
        and getattr(value, "__module__", _sqla.__name__) in (_sqla.__name__, None)
        and name not in ("annotations",)
    ]
    assert len(names) > 40  # the walk sees them
    missing = [n for n in names if f"_sqla.{n}" not in text]
    assert not missing, f"no test names these _sqla members: {missing}"
