"""Dynamic sparse training core (no RecBole): which tensors and how many non-zeros
(:mod:`.budgets`), the schedule (:mod:`.schedule`), prune and grow as functions
(:mod:`.prune_grow`), a sparse start's initial values (:mod:`.initialization`), how a sparse
tensor is held (:mod:`.storage`), what optimizers need (:mod:`.optimizer_state`) and the
manager that drives them from optimizer hooks (:mod:`.masking`)."""

from recbole_dsl.sparse.budgets import DISTRIBUTIONS, layer_densities, round_budget, select_parameters
from recbole_dsl.sparse.masking import GROWTH_GRADIENTS, GROWTH_MODES, MaskManager, MaskUpdate
from recbole_dsl.sparse.prune_grow import PREFIX_GROWTHS
from recbole_dsl.sparse.schedule import CosineUpdateSchedule

__all__ = [
    "CosineUpdateSchedule",
    "DISTRIBUTIONS",
    "GROWTH_GRADIENTS",
    "GROWTH_MODES",
    "MaskManager",
    "MaskUpdate",
    "PREFIX_GROWTHS",
    "layer_densities",
    "round_budget",
    "select_parameters",
]
