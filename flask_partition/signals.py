"""Blinker signals for routing decisions and replica state changes.

Connect to them as to Flask's own signals; the sender is the Flask app::

    from flask_partition.signals import routed

    @routed.connect_via(app)
    def log_route(app, cluster, role, node, reason, **extra):
        ...

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: Sent for each routing decision of a :class:`~flask_partition.PartitionSession`
#: (each statement, each connection a flush asks for, and each retry of a
#: read whose replica failed), with keyword arguments ``cluster`` (bind or
#: shard name, ``None`` for the default cluster), ``role``
#: (:class:`~flask_partition.routing.Role`), ``node`` (``"primary"`` or
#: ``"replica[1]"``) and ``reason`` (text).
routed = _signals.signal("partition-routed")

#: Sent when a replica is marked down (it failed to connect or its connection
#: broke) and when it is reachable again, with keyword arguments ``cluster``,
#: ``replica`` (its index in the config), ``url`` (password masked), ``state``
#: (``"down"`` or ``"up"``) and ``error`` (text, ``None`` for ``"up"``).
replica_state_changed = _signals.signal("partition-replica-state-changed")
