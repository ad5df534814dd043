"""Planning: sub-model heads under a memory budget (Alg. 1), device assignment."""

from edvit.plan import Plan, SubmodelPlan
from modelgen.planning.assign import Assignment, DeviceCapacity, Item, assign_greedy, assign_optimal
from modelgen.planning.plan import PlanError, group_ids, make_plan

__all__ = [
    "Assignment",
    "DeviceCapacity",
    "Item",
    "Plan",
    "PlanError",
    "SubmodelPlan",
    "assign_greedy",
    "assign_optimal",
    "group_ids",
    "make_plan",
]
