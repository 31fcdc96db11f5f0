"""Flask-Partition: one SQLAlchemy session per request over many databases."""

from __future__ import annotations

from .decorators import use_primary as use_primary
from .decorators import use_replica as use_replica
from .errors import CrossClusterError as CrossClusterError
from .errors import ReadOnlyError as ReadOnlyError
from .errors import UnknownClusterError as UnknownClusterError
from .extension import PartitionDB as PartitionDB
from .model import PartitionModel as PartitionModel
from .pagination import Pagination as Pagination
from .session import PartitionSession as PartitionSession

__version__ = "0.1.0.dev0"
