"""Create, drop and reflect tables cluster by cluster: which clusters a call
acts on, and the operation on each one's primary.

:meth:`PartitionDB.create_all <flask_partition.PartitionDB.create_all>`,
``drop_all`` and ``reflect`` choose their clusters with :func:`targets` and
run with :func:`run`; ``flask partition create-all`` and ``drop-all`` choose
theirs with :func:`configured_targets` and run with :func:`run_each`, which
goes on after a cluster fails.
"""

from __future__ import annotations

import dataclasses
import enum
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from .display import capitalized
from .display import error_text
from .replicas import cluster_label


class Every(enum.Enum):
    """The type of :data:`EVERY`."""

    EVERY = "every"


#: Select every cluster of a kind: every bind (those configured and those a
#: model names), or every shard.
EVERY: t.Final = Every.EVERY

#: Bind keys (``None`` is the default cluster), or :data:`EVERY`.
BindSelection: t.TypeAlias = t.Sequence[str | None] | Every
#: Shard names, or :data:`EVERY`.
ShardSelection: t.TypeAlias = t.Sequence[str] | Every


class HasPrimary(t.Protocol):
    """A cluster, as far as schema operations go."""

    @property
    def primary(self) -> sa.Engine:
        """The engine tables are created on."""


class ClusterLookup(t.Protocol):
    """What schema operations need of an application's router."""

    @property
    def shards(self) -> t.Mapping[str, HasPrimary]:
        """The shards by name, in configuration order."""

    def cluster(self, name: str | None, *, context: str = "") -> HasPrimary:
        """The cluster of a bind key; raises for an unknown one."""

    def shard(self, name: t.Any, *, context: str = "") -> HasPrimary:
        """The shard called ``name``; raises for an unknown one."""


class SchemaOwner(t.Protocol):
    """What schema operations need of the extension
    (:class:`~flask_partition.PartitionDB`).
    """

    @property
    def metadatas(self) -> t.Mapping[str | None, sa.MetaData]:
        """The metadata of each bind key."""

    @property
    def shard_metadata(self) -> sa.MetaData:
        """The metadata of the sharded tables."""

    @property
    def engines(self) -> t.Mapping[str | None, sa.Engine]:
        """The current app's configured clusters' primaries by bind key."""

    def get_router(self) -> ClusterLookup:
        """The current app's router."""


@dataclasses.dataclass(frozen=True)
class Target:
    """One cluster's primary and the tables to act on there."""

    #: ``the default cluster``, ``bind 'x'`` or ``shard 'eu'``.
    label: str
    metadata: sa.MetaData
    engine: sa.Engine
    #: The bind key; ``None`` for the default cluster and for shards.
    bind: str | None = None
    #: The shard name; ``None`` unless a shard.
    shard: str | None = None


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What an operation did on one :class:`Target`."""

    target: Target
    #: The metadata's table names, in creation order.
    tables: list[str]
    #: Those that existed before the operation.
    existing: list[str]
    #: Why the operation failed, password masked; ``None`` when it succeeded.
    error: str | None = None

    @property
    def created(self) -> list[str]:
        """The tables that did not exist before (``create_all``)."""
        return [name for name in self.tables if name not in self.existing]


class SelectionError(ValueError):
    """A cluster named for a schema operation is not configured.

    :param message: The error message.
    :param kind: Which selector named it: ``"default"``, ``"bind"`` or
        ``"shard"``.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def targets(
    owner: SchemaOwner,
    *,
    binds: BindSelection,
    shards: ShardSelection,
    operation: str = "",
) -> list[Target]:
    """The clusters of a ``create_all``, ``drop_all`` or ``reflect`` call,
    every name checked before anything is done.

    :param owner: The extension.
    :param binds: Bind keys, or :data:`EVERY` for every configured cluster
        and every bind key a model declares (so that a model whose bind the
        app lacks is reported, not skipped).
    :param shards: Shard names, or :data:`EVERY`.
    :param operation: The operation, named in the error for an unknown shard.
    :raises ~flask_partition.UnknownClusterError: A bind the app did not
        configure.
    :raises ~flask_partition.UnknownShardError: A shard the app did not
        configure, or sharded tables with no shards configured.
    """
    router = owner.get_router()
    metadatas = owner.metadatas
    chosen = []
    for key in _every_bind(owner) if binds is EVERY else binds:
        metadata = metadatas.get(key)
        tables = "" if metadata is None else ", ".join(map(repr, metadata.tables))
        cluster = router.cluster(key, context=f" (tables {tables})" if tables else "")
        chosen.append(_bind_target(key, metadatas[key], cluster.primary))
    if shards is EVERY:
        shards = list(router.shards)
        if not shards and owner.shard_metadata.tables:
            router.shard(None, context=" (sharded tables exist)")
    for name in shards:
        cluster = router.shard(
            name, context=f" (in '{operation}')" if operation else ""
        )
        chosen.append(_shard_target(name, owner.shard_metadata, cluster.primary))
    return chosen


def configured_targets(
    owner: SchemaOwner,
    *,
    default: bool = False,
    binds: t.Sequence[str] = (),
    shards: t.Sequence[str] = (),
) -> list[Target]:
    """The configured clusters named, or every configured cluster and shard
    when none is; a name that is not configured is an error, and so is the
    default cluster when only binds are configured. Models whose cluster is
    not configured are left out: see :func:`unconfigured`.

    :raises SelectionError: A name is not configured.
    """
    configured = owner.engines
    router = owner.get_router()
    if not (default or binds or shards):
        return targets(owner, binds=list(configured), shards=list(router.shards))
    keys: list[str | None] = []
    if default:
        if None not in configured:
            raise SelectionError(
                f"{capitalized(cluster_label(None))} is not configured: only"
                " binds are.",
                "default",
            )
        keys.append(None)
    for name in binds:
        if name not in configured:
            known = ", ".join(repr(k) for k in configured if k is not None)
            raise SelectionError(
                f"{capitalized(cluster_label(name))} is not configured."
                f" Configured binds: {known or 'none'}.",
                "bind",
            )
        keys.append(name)
    for name in shards:
        if name not in router.shards:
            known = ", ".join(repr(k) for k in router.shards)
            raise SelectionError(
                f"{capitalized(cluster_label(name, shard=True))} is not"
                f" configured. Configured shards: {known or 'none'}.",
                "shard",
            )
    return targets(
        owner, binds=list(dict.fromkeys(keys)), shards=list(dict.fromkeys(shards))
    )


def unconfigured(owner: SchemaOwner) -> list[str]:
    """Problems with models whose cluster is not configured, which
    :func:`configured_targets` leaves out and ``db.create_all()`` raises for.
    """
    configured = owner.engines
    problems = []
    for key, metadata in owner.metadatas.items():
        if not metadata.tables or key in configured:
            continue
        tables = ", ".join(repr(name) for name in metadata.tables)
        config_key = "PARTITION_DATABASE_URI" if key is None else "PARTITION_BINDS"
        problems.append(
            f"{cluster_label(key)} (tables {tables}) is not configured; add it to"
            f" {config_key!r}."
        )
    if owner.shard_metadata.tables and not owner.get_router().shards:
        names = ", ".join(repr(n) for n in owner.shard_metadata.tables)
        problems.append(
            f"sharded tables ({names}) exist but 'PARTITION_SHARDS' is not set."
        )
    return problems


def run(chosen: t.Iterable[Target], operation: str) -> None:
    """Run ``operation`` (``"create_all"``, ``"drop_all"`` or ``"reflect"``)
    of each target's metadata on its primary; the first failure raises.
    """
    for target in chosen:
        getattr(target.metadata, operation)(bind=target.engine)


def run_each(chosen: t.Iterable[Target], operation: str) -> t.Iterator[Outcome]:
    """Run ``operation`` on each target in turn, as :func:`run` does, and
    yield what it did there; a target that fails is reported and the next
    one is still done.
    """
    for target in chosen:
        tables = target.metadata.sorted_tables
        try:
            inspector = sa.inspect(target.engine)
            existing = [
                table.name
                for table in tables
                if inspector.has_table(table.name, schema=table.schema)
            ]
            run([target], operation)
        except (sa_exc.SQLAlchemyError, OSError) as error:
            message = error_text(error, target.engine)
            yield Outcome(target, [table.name for table in tables], [], message)
            continue
        yield Outcome(target, [table.name for table in tables], existing)


def _every_bind(owner: SchemaOwner) -> list[str | None]:
    """The app's clusters, then the bind keys models declare that it lacks."""
    keys: list[str | None] = list(owner.engines)
    keys += [k for k, m in owner.metadatas.items() if m.tables and k not in keys]
    return keys


def _bind_target(key: str | None, metadata: sa.MetaData, engine: sa.Engine) -> Target:
    return Target(cluster_label(key), metadata, engine, bind=key)


def _shard_target(name: str, metadata: sa.MetaData, engine: sa.Engine) -> Target:
    return Target(cluster_label(name, shard=True), metadata, engine, shard=name)


__all__ = [
    "EVERY",
    "BindSelection",
    "ClusterLookup",
    "Outcome",
    "SchemaOwner",
    "SelectionError",
    "ShardSelection",
    "Target",
    "configured_targets",
    "run",
    "run_each",
    "targets",
    "unconfigured",
]
