"""Commits over several clusters: the commit modes (:mod:`.modes`),
two-phase commit (:mod:`.twophase`) and its recovery (:mod:`.recovery`).

The names most users need are re-exported here.
"""

from __future__ import annotations

from .modes import PartitionTransaction as PartitionTransaction
from .modes import TwoPhaseTransaction as TwoPhaseTransaction
from .recovery import InDoubt as InDoubt
from .recovery import recover as recover
from .twophase import commit_log as commit_log
from .twophase import XID_PREFIX as XID_PREFIX
