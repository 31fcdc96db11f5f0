"""``flask partition``: inspect and manage every database of an application.

:meth:`PartitionDB.init_app <flask_partition.PartitionDB.init_app>` adds the
``partition`` command group to the application's CLI:

``status``
    Every node of every cluster: reachable or not, replica lag, and each
    cluster's Alembic revision against the migration scripts.
``create-all`` / ``drop-all``
    Create or drop the tables, cluster by cluster.
``shards``
    The shard map and the rows each shard holds.
``recover``
    Resolve the prepared transactions two-phase commits left behind.
``dev-cluster``
    Start a local PostgreSQL topology like the application's config.

The commands are thin: each parses its options, calls the module that knows
what it inspects (:mod:`~flask_partition.health`,
:mod:`~flask_partition.schema`, :mod:`~flask_partition.sharding.report`,
:mod:`~flask_partition.transactions`, :mod:`~flask_partition.pgcluster`),
prints, and chooses the exit code: :data:`EXIT_OK`, :data:`EXIT_FAILED` or
:data:`EXIT_USAGE`. No other module of the package imports this one:
``init_app`` registers a group that loads it by name on first use.
"""

from __future__ import annotations

from flask.cli import AppGroup

from ..cli_group import HELP
from ._output import EXIT_FAILED as EXIT_FAILED
from ._output import EXIT_OK as EXIT_OK
from ._output import EXIT_USAGE as EXIT_USAGE
from .devcluster import dev_cluster_command
from .devcluster import dev_cluster_config as dev_cluster_config
from .devcluster import export_lines as export_lines
from .recover import recover_command
from .schema import create_all_command
from .schema import drop_all_command
from .shards import shards_command
from .status import status_command

partition_cli = AppGroup("partition", help=HELP)
partition_cli.add_command(status_command)
partition_cli.add_command(create_all_command)
partition_cli.add_command(drop_all_command)
partition_cli.add_command(shards_command)
partition_cli.add_command(recover_command)
partition_cli.add_command(dev_cluster_command)

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "dev_cluster_config",
    "export_lines",
    "partition_cli",
]
