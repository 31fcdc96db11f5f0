"""Where each cluster's schema stands against the application's Alembic
migrations: the revisions in a database's version table, the heads of
Flask-Migrate's migrations folder, and why a cluster is behind them.

``flask partition status`` and :func:`~flask_partition.health.check_nodes`
report what this finds; see :doc:`/migrations`.
"""

from __future__ import annotations

import dataclasses
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from .display import error_text

if t.TYPE_CHECKING:
    from flask import Flask


class ClusterRevisions(t.Protocol):
    """A primary whose version table was read, as the checks see it
    (:class:`~flask_partition.health.NodeStatus` is one).
    """

    @property
    def cluster(self) -> str | None:
        """The bind or shard name, ``None`` for the default cluster."""

    @property
    def kind(self) -> str:
        """``"default"``, ``"bind"`` or ``"shard"``."""

    @property
    def revisions(self) -> tuple[str, ...] | None:
        """The revisions in its version table, sorted."""


@dataclasses.dataclass(frozen=True)
class VersionTable:
    """Where Alembic keeps a database's revision: Flask-Migrate's
    ``version_table`` and ``version_table_schema``, if given.
    """

    name: str = "alembic_version"
    schema: str | None = None


@dataclasses.dataclass(frozen=True)
class MigrationScripts:
    """What the application's migration scripts say every cluster should be
    at.
    """

    #: Flask-Migrate's migrations folder, as configured.
    directory: str
    #: Why the folder cannot be read; nothing else is set then.
    error: str | None = None
    #: The head revisions, sorted; empty before the first revision.
    heads: tuple[str, ...] = ()
    #: Every revision of the folder.
    known: frozenset[str] = frozenset()
    #: The cluster names the heads have ``upgrade_<name>()`` functions for,
    #: ``None`` for the default cluster (``upgrade_()``); empty when the
    #: scripts come from the single-database template.
    functions: frozenset[str | None] = frozenset()

    @property
    def multidb(self) -> bool:
        """Whether the scripts come from Flask-Migrate's multi-database
        template (an ``upgrade_<name>()`` per database).
        """
        return bool(self.functions)

    def migrates(self, kind: str, revisions: t.Iterable[str]) -> bool:
        """Whether these scripts migrate a cluster of ``kind`` that is at
        ``revisions``: the multi-database template migrates every database
        of the app, the single-database one only the default cluster (or a
        database it was run on).
        """
        return self.multidb or kind == "default" or bool(set(revisions))


def version_table(app: Flask) -> VersionTable:
    """The version table Flask-Migrate is configured to use on ``app``."""
    migrate = app.extensions.get("migrate")
    options = getattr(migrate, "configure_args", None) or {}
    return VersionTable(
        options.get("version_table") or "alembic_version",
        options.get("version_table_schema"),
    )


def migration_scripts(app: Flask) -> MigrationScripts | None:
    """Read Flask-Migrate's migrations folder; ``None`` without Flask-Migrate."""
    migrate = app.extensions.get("migrate")
    if migrate is None or not hasattr(migrate, "migrate"):
        return None
    from alembic.script import ScriptDirectory

    directory = str(migrate.directory)
    try:
        with app.app_context():  # get_config reads 'flask db -x' from g
            config = migrate.migrate.get_config(directory)
        script = ScriptDirectory.from_config(config)
        heads = tuple(sorted(script.get_heads()))
        known = frozenset(revision.revision for revision in script.walk_revisions())
        functions = {
            name.removeprefix("upgrade_")
            for head in heads
            for name in vars(script.get_revision(head).module)
            if name.startswith("upgrade_")
        }
    # A missing folder, a broken revision script: whatever it raises, the
    # nodes are still worth reporting.
    except Exception as error:
        return MigrationScripts(directory, error=error_text(error))
    return MigrationScripts(
        directory,
        heads=heads,
        known=known,
        functions=frozenset(name or None for name in functions),
    )


def read_revisions(
    conn: sa.Connection, table: VersionTable
) -> tuple[tuple[str, ...] | None, str | None]:
    """Read the revisions of Alembic's version table on ``conn``, sorted
    (empty when the table is missing); or ``None`` and why they cannot be
    read.
    """
    try:
        if not sa.inspect(conn).has_table(table.name, schema=table.schema):
            return (), None
        version = sa.table(table.name, sa.column("version_num"), schema=table.schema)
        rows = conn.scalars(sa.select(version.c.version_num)).all()
    except sa_exc.SQLAlchemyError as error:
        return None, (
            f"cannot read the revision in {table.name!r}:"
            f" {error_text(error, conn.engine)}"
        )
    return tuple(sorted(str(row) for row in rows)), None


def revisions_text(revisions: t.Iterable[str]) -> str:
    """Revisions for a message: ``a1, b2``, or ``none``."""
    return ", ".join(sorted(revisions)) or "none"


def revision_problems(
    primaries: t.Sequence[ClusterRevisions], scripts: MigrationScripts | None
) -> dict[str | None, str]:
    """Why each cluster's schema is not where it should be, by cluster name
    (bind and shard names share one namespace). Without readable scripts,
    the shards are compared with each other.

    :param primaries: The primaries whose revisions were read.
    :param scripts: The migrations folder, ``None`` without Flask-Migrate.
    """
    if scripts is None or scripts.error is not None:
        return _shards_disagree([n for n in primaries if n.kind == "shard"])
    problems: dict[str | None, str] = {}
    for node in primaries:
        problem = _revision_problem(node, scripts)
        if problem is not None:
            problems[node.cluster] = problem
    return problems


def _revision_problem(node: ClusterRevisions, scripts: MigrationScripts) -> str | None:
    heads = set(scripts.heads)
    head = revisions_text(heads)
    where = repr(scripts.directory)
    current = set(node.revisions or ())
    unknown = current - scripts.known
    if unknown:
        return (
            f"at revision {revisions_text(unknown)}, which the migration"
            f" scripts in {where} do not have: a newer release, or another"
            " migrations folder, migrated it"
        )
    if not scripts.migrates(node.kind, current) or current == heads:
        return None
    if current:
        return (
            f"at revision {revisions_text(current)}, behind the head {head}"
            f" of {where}: run 'flask db upgrade'"
        )
    if scripts.multidb and node.cluster not in scripts.functions:
        option = "--shard" if node.kind == "shard" else "--bind"
        return (
            f"no migration applied, and the migration scripts have no"
            f" 'upgrade_{node.cluster}()' ({node.kind} added after them), so"
            f" 'flask db upgrade' fails: run 'flask partition create-all"
            f" {option} {node.cluster}', then 'flask db stamp head'"
        )
    return (
        f"no migration applied, the head of {where} is {head}: run 'flask db upgrade'"
    )


def _shards_disagree(shards: list[ClusterRevisions]) -> dict[str | None, str]:
    """Without migration scripts, a shard is behind when its revision is
    not that of most shards: every shard holds the same tables.
    """
    groups: dict[tuple[str, ...], list[str | None]] = {}
    for node in shards:
        groups.setdefault(node.revisions or (), []).append(node.cluster)
    if len(groups) < 2:
        return {}
    sizes = sorted((len(names) for names in groups.values()), reverse=True)
    majority = None
    if sizes[0] > sizes[1]:
        majority = max(groups, key=lambda revisions: len(groups[revisions]))
    problems: dict[str | None, str] = {}
    for revisions, names in groups.items():
        if revisions == majority:
            continue
        others = "; ".join(
            f"{', '.join(repr(n) for n in other)} at {revisions_text(rev)}"
            for rev, other in groups.items()
            if rev != revisions
        )
        for name in names:
            problems[name] = (
                f"at revision {revisions_text(revisions)}, unlike the other"
                f" shards ({others}): every shard should be at the same revision"
            )
    return problems


def head_count(
    primaries: t.Sequence[ClusterRevisions], scripts: MigrationScripts
) -> tuple[int, int]:
    """How many clusters the scripts migrate are at their head, and how many
    they migrate.
    """
    tracked = [n for n in primaries if scripts.migrates(n.kind, n.revisions or ())]
    current = [n for n in tracked if set(n.revisions or ()) == set(scripts.heads)]
    return len(current), len(tracked)


__all__ = [
    "ClusterRevisions",
    "MigrationScripts",
    "VersionTable",
    "head_count",
    "migration_scripts",
    "read_revisions",
    "revision_problems",
    "revisions_text",
    "version_table",
]
