"""Dynamic sparse training core: masks, budgets, schedule, prune and grow (no RecBole)."""

from recbole_dsl.sparse.masking import (
    DISTRIBUTIONS,
    GROWTH_GRADIENTS,
    GROWTH_MODES,
    MaskManager,
    MaskUpdate,
    layer_densities,
    round_budget,
    select_parameters,
)
from recbole_dsl.sparse.schedule import CosineUpdateSchedule

__all__ = [
    "CosineUpdateSchedule",
    "DISTRIBUTIONS",
    "GROWTH_GRADIENTS",
    "GROWTH_MODES",
    "MaskManager",
    "MaskUpdate",
    "layer_densities",
    "round_budget",
    "select_parameters",
]
