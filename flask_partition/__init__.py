"""Flask-Partition: one SQLAlchemy session per request over many databases."""

from __future__ import annotations

from .consistency import ROUTE_HEADER as ROUTE_HEADER
from .consistency import TOKEN_HEADER as TOKEN_HEADER
from .decorators import commit_mode as commit_mode
from .decorators import use_primary as use_primary
from .decorators import use_replica as use_replica
from .decorators import use_shard as use_shard
from .errors import AmbiguousShardError as AmbiguousShardError
from .errors import CrossClusterError as CrossClusterError
from .errors import CrossShardWriteError as CrossShardWriteError
from .errors import PartialCommitError as PartialCommitError
from .errors import PrimaryUnavailableError as PrimaryUnavailableError
from .errors import ReadOnlyError as ReadOnlyError
from .errors import ScatterError as ScatterError
from .errors import ShardingError as ShardingError
from .errors import ShardKeyError as ShardKeyError
from .errors import TwoPhaseError as TwoPhaseError
from .errors import UnknownClusterError as UnknownClusterError
from .errors import UnknownShardError as UnknownShardError
from .extension import PartitionDB as PartitionDB
from .model import PartitionModel as PartitionModel
from .pagination import Pagination as Pagination
from .session import PartitionSession as PartitionSession
from .sharding.executor import ALL_SHARDS as ALL_SHARDS
from .sharding.maps import DirectoryShardMap as DirectoryShardMap
from .sharding.maps import HashShardMap as HashShardMap
from .sharding.maps import KeyIsShardName as KeyIsShardName
from .sharding.maps import RangeShardMap as RangeShardMap
from .sharding.maps import ShardMap as ShardMap
from .signals import replica_state_changed as replica_state_changed
from .signals import routed as routed

__version__ = "0.1.0.dev0"
