"""Horizontal sharding: shard keys and maps (:mod:`.maps`), per-shard
execution (:mod:`.executor`), the exact merge of results from several
shards (:mod:`.scatter`) and the worker pool that queries them at the same
time (:mod:`.parallel`).

The shard maps are re-exported here.
"""

from __future__ import annotations

from .maps import DEFAULT_BUCKETS as DEFAULT_BUCKETS
from .maps import DirectoryShardMap as DirectoryShardMap
from .maps import HashShardMap as HashShardMap
from .maps import is_sharded as is_sharded
from .maps import key_bytes as key_bytes
from .maps import KeyIsShardName as KeyIsShardName
from .maps import RangeShardMap as RangeShardMap
from .maps import ShardKey as ShardKey
from .maps import ShardMap as ShardMap
