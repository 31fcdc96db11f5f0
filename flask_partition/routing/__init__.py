"""Statement routing: the plan of the context (:mod:`.plan`), what a
statement may do (:mod:`.classify`), where it goes (:mod:`.decide`) and the
reporting of that choice (:mod:`.trace`).

The names most users need are re-exported here.
"""

from __future__ import annotations

from .classify import classify as classify
from .classify import Intent as Intent
from .plan import current_plan as current_plan
from .plan import Plan as Plan
from .plan import Role as Role
