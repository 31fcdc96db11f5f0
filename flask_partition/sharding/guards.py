"""The guards that keep sharded rows where key-based reads find them.

They run before any SQL is sent: a flush that would store a row without a
key, change a row's key, write outside the pinned shard or relate rows of
two shards is refused whole, and so is an UPDATE statement that sets the key.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.horizontal_shard import ShardedSession

from .. import _sqla
from ..errors import ShardKeyError
from .maps import ShardKey

if t.TYPE_CHECKING:
    from ..topology import Router


def flush_shards(session: sa_orm.Session, router: Router) -> set[str]:
    """The shards the pending flush writes to (after :func:`check_flush`
    gave new rows their shard).
    """
    shards: set[str] = set()
    for instance in [*session.new, *session.dirty, *session.deleted]:
        state = sa.inspect(instance)
        if router.shard_key(state.mapper) is None:
            continue
        shard = _sqla.shard_of_state(state)
        if shard is not None:
            shards.add(shard)
    return shards


def check_flush(session: ShardedSession, router: Router, pinned: str | None) -> None:
    """Give every new sharded row its shard, and refuse rows that would
    be stored where key-based reads miss them. Runs before any SQL.

    :raises ShardKeyError: A row without a key, a changed key, a row of
        another shard than the pinned one, or related rows on two shards.
    """
    for instance in session.new:
        state = sa.inspect(instance)
        if router.shard_key(state.mapper) is None:
            continue
        # Chosen again on every flush: the key may have changed since a
        # flush that failed.
        shard = session.shard_chooser(state.mapper, instance, None)
        router.shard(shard, context=" (from the shard chooser)")
        if pinned is not None and shard != pinned:
            raise ShardKeyError(
                f"A new {state.mapper.class_.__name__} belongs on shard"
                f" {shard!r} by its key, but the block is pinned to shard"
                f" {pinned!r} with 'use_shard'. Nothing was written."
            )
        _sqla.set_identity_token(state, shard)
    for instance in [*session.new, *session.dirty]:
        _check_related(router, sa.inspect(instance))
    for instance in [*session.dirty, *session.deleted]:
        _check_changed(session, router, instance, pinned)


def _check_changed(
    session: sa_orm.Session, router: Router, instance: t.Any, pinned: str | None
) -> None:
    state = sa.inspect(instance)
    key = router.shard_key(state.mapper)
    if key is None or state.key is None:
        return
    if key.attribute is not None and instance not in session.deleted:
        history = state.attrs[key.attribute].history
        if history.has_changes():
            raise ShardKeyError(
                f"{key.model}.{key.attribute} is the shard key and cannot"
                f" change (from {history.deleted!r} to {history.added!r}):"
                " the row would stay on its old shard. Insert a new row"
                " and delete the old one instead. Nothing was written."
            )
    shard = state.key[2]
    if pinned is not None and shard != pinned:
        raise ShardKeyError(
            f"A {key.model} of shard {shard!r} was changed inside"
            f" 'use_shard({pinned!r})'. Nothing was written."
        )


def _check_related(router: Router, state: t.Any) -> None:
    """Refuse relating a sharded row to a sharded row of another shard:
    the rows could never be joined or loaded together.
    """
    shard = _sqla.shard_of_state(state)
    if shard is None or router.shard_key(state.mapper) is None:
        return
    for rel in state.mapper.relationships:
        value = state.dict.get(rel.key)
        if value is None or router.shard_key(rel.mapper) is None:
            continue
        for other in value if rel.uselist else [value]:
            other_shard = _sqla.shard_of_state(sa.inspect(other))
            if other_shard is not None and other_shard != shard:
                raise ShardKeyError(
                    f"{state.mapper.class_.__name__}.{rel.key} relates a row"
                    f" on shard {shard!r} to a {rel.mapper.class_.__name__}"
                    f" on shard {other_shard!r}. Related sharded rows must"
                    " share a shard (give them the same shard key)."
                    " Nothing was written."
                )


def refuse_key_change(orm_context: sa_orm.ORMExecuteState, key: ShardKey) -> None:
    """An UPDATE may not set the shard key: rows would stay on the shard of
    their old key. Covers ``values()``, ``ordered_values()`` and the
    parameters given to ``execute()``.
    """
    if key.column is None:
        return
    statement = t.cast(sa.Update, orm_context.statement)
    names = _sqla.dml_set_keys(statement)
    params = orm_context.parameters
    rows = params if isinstance(params, list) else [params or {}]
    for row in t.cast("list[dict[str, t.Any]]", rows):
        names.update(row)
    if key.column.key in names or key.attribute in names:
        raise ShardKeyError(
            f"This UPDATE sets {key.model}.{key.column.key}, the shard key:"
            " the rows would stay on the shard of their old key. Insert new"
            " rows and delete the old ones instead. Nothing was written."
        )
