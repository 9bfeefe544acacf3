"""Cosine-annealed schedule of the mask-update ratio (rho_t in the DSL paper)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass
class CosineUpdateSchedule:
    """When masks are updated and which fraction of active weights is exchanged.

    ``rho_t = rho_min + (rho_0 - rho_min) * (1 + cos(pi * t / T_end)) / 2`` at every
    ``t = update_interval, 2 * update_interval, ...`` while ``t <= T_end``.
    An ``update_interval`` of 0 never updates (a static mask).
    """

    update_interval: int
    init_update_ratio: float
    min_update_ratio: float = 0.005
    end_iteration: Optional[int] = None

    def update_ratio(self, iteration: int) -> float:
        """rho_t: the fraction of each tensor's active weights exchanged at ``iteration``."""
        if self.end_iteration is None or self.end_iteration <= 0:
            raise RuntimeError("end_iteration (T_end) must be set before the schedule is used")
        progress = min(iteration / self.end_iteration, 1.0)
        cosine = (1.0 + math.cos(math.pi * progress)) / 2.0
        return self.min_update_ratio + (self.init_update_ratio - self.min_update_ratio) * cosine

    def is_update_iteration(self, iteration: int) -> bool:
        """True when the masks are re-explored at this (1-based) optimizer iteration."""
        return (
            self.update_interval > 0
            and self.end_iteration is not None
            and 0 < iteration <= self.end_iteration
            and iteration % self.update_interval == 0
        )
