"""``use_primary``, ``use_replica`` and ``use_shard``: view decorators and
context managers that pin where the statements of a block go.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import typing as t

from flask import current_app
from flask import has_app_context

from .config import check_commit_mode
from .routing.plan import _plan
from .routing.plan import Plan
from .routing.plan import Role

F = t.TypeVar("F", bound=t.Callable[..., t.Any])

# Tokens of the active 'with' blocks, per context: one Pin object may be shared
# by threads or tasks, and each must restore its own previous plan.
_tokens: contextvars.ContextVar[tuple[contextvars.Token[Plan], ...]] = (
    contextvars.ContextVar("flask_partition_pin_tokens", default=())
)


class Pin:
    """Change the routing plan for a block, as a context manager or a view
    decorator, and restore the previous plan afterwards, also on exceptions.

    Instances come from :func:`~flask_partition.use_primary` and
    :func:`~flask_partition.use_replica`; the same instance may be entered
    again while it is active (nesting), and from several threads or tasks.

    :param name: The helper's name, shown in errors.
    :param change: Returns the plan in force inside the block.

    .. versionadded:: 0.1.0
    """

    def __init__(self, name: str, change: t.Callable[[Plan], Plan]) -> None:
        self.name = name
        self._change = change

    def __enter__(self) -> Plan:
        plan = self._change(_plan.get())
        _check_shard(plan)
        _tokens.set((*_tokens.get(), _plan.set(plan)))
        return plan

    def __exit__(self, *exc_info: object) -> None:
        stack = _tokens.get()
        _tokens.set(stack[:-1])
        _plan.reset(stack[-1])

    def __call__(self, view: F) -> F:
        """Decorate ``view`` so each call runs under this plan.

        Works on ``async def`` views: the coroutine runs through
        :meth:`flask.Flask.ensure_sync` inside the block, not after it.
        """
        change = self._change

        @functools.wraps(view)
        def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            plan = change(_plan.get())
            _check_shard(plan)
            token = _plan.set(plan)
            try:
                return current_app.ensure_sync(view)(*args, **kwargs)
            finally:
                _plan.reset(token)

        return t.cast(F, wrapper)

    def __repr__(self) -> str:
        return f"<{self.name}>"


def _check_shard(plan: Plan) -> None:
    """Refuse an unknown shard as soon as the block starts, when an app is
    there to tell which shards exist.
    """
    if plan.shard is not None and has_app_context():
        state = current_app.extensions.get("partition.state")
        if state is not None:
            state.router.shard(plan.shard, context=" (from 'use_shard')")


def _to_primary(plan: Plan) -> Plan:
    return dataclasses.replace(
        plan, role=Role.PRIMARY, read_only=False, pinned_by="use_primary"
    )


def _to_replica(plan: Plan) -> Plan:
    return dataclasses.replace(
        plan, role=Role.REPLICA, read_only=True, pinned_by="use_replica"
    )


@t.overload
def use_primary(view: F) -> F: ...


@t.overload
def use_primary(view: None = None) -> Pin: ...


def use_primary(view: F | None = None) -> F | Pin:
    """Send every statement of a view or block to the primaries.

    Use it where a read must see the latest committed data, for example a
    checkout that reads stock it is about to change::

        @app.post("/checkout")
        @use_primary
        def checkout(): ...

        with use_primary():
            db.session.scalar(select(Stock).where(...))

    The innermost helper wins when helpers nest.

    :param view: The view to decorate; leave out to get a context manager.

    .. versionadded:: 0.1.0
    """
    pin = Pin("use_primary", _to_primary)
    return pin if view is None else pin(view)


@t.overload
def use_replica(view: F) -> F: ...


@t.overload
def use_replica(view: None = None) -> Pin: ...


def use_replica(view: F | None = None) -> F | Pin:
    """Make a view or block read-only and let its reads use replicas.

    A flush or an INSERT, UPDATE, DELETE, DDL, ``FOR UPDATE`` or sequence
    statement raises :class:`~flask_partition.ReadOnlyError` before any SQL
    is sent. Raw ``text()`` SQL goes to a replica, which refuses writes
    itself. A cluster the session already wrote to is still read from its
    primary, so the block never reads older data than the session wrote.

    :param view: The view to decorate; leave out to get a context manager.

    .. versionadded:: 0.1.0
    """
    pin = Pin("use_replica", _to_replica)
    return pin if view is None else pin(view)


def use_shard(name: str) -> Pin:
    """Send the statements of sharded models in a view or block to one shard.

    Reads of sharded models go to that shard only (its replica, unless the
    session wrote there or :func:`use_primary` is in force); new rows must
    map to it, or :class:`~flask_partition.errors.ShardKeyError` is raised
    before anything is written. Unsharded models are not affected. It
    composes with :func:`use_primary` and :func:`use_replica`::

        @app.get("/eu/stats")
        @use_shard("eu")
        def eu_stats(): ...

        with use_shard("us"), use_replica():
            db.session.scalars(select(Order))

    :param name: A shard configured in ``PARTITION_SHARDS``. An unknown name
        raises :class:`~flask_partition.errors.UnknownShardError` when the
        block starts (inside an app context) or at the first statement.

    .. versionadded:: 0.1.0
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"'use_shard' needs a shard name, got {name!r}.")

    def change(plan: Plan) -> Plan:
        return dataclasses.replace(plan, shard=name)

    return Pin(f"use_shard({name!r})", change)


def commit_mode(mode: str) -> Pin:
    """Choose how the session commits when a view or block wrote to several
    clusters, overriding ``PARTITION_COMMIT_MODE``::

        @app.post("/transfer")
        @commit_mode("two_phase")
        def transfer(): ...

        with commit_mode("single"):
            ...
            db.session.commit()

    The mode in force when the session's transaction starts (its first
    statement) applies to that transaction, so put the whole unit of work,
    commit included, inside the block. See :doc:`/transactions`.

    :param mode: ``"best_effort"``, ``"single"`` or ``"two_phase"``.
    :raises ValueError: For another value.

    .. versionadded:: 0.1.0
    """
    check_commit_mode(mode, "'commit_mode'")

    def change(plan: Plan) -> Plan:
        return dataclasses.replace(plan, commit_mode=mode)

    return Pin(f"commit_mode({mode!r})", change)
