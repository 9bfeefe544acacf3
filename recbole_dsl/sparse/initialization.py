"""Initial values for a sparse start.

A layer initialized for its dense fan-in and then masked to density ``d`` sums about ``d`` of
the inputs its weights were drawn for: each unit's pre-activation variance starts ``d`` times
too small, and its activations and gradients ``sqrt(d)`` times, layer after layer. Evci et
al. (Gradient Flow in Sparse Neural Networks and How Lottery Tickets Win, arXiv 2010.03533)
scale each unit's initial weights to the fan-in its mask leaves it instead.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def scale_to_active_fan_in_(weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Multiply each output unit's weights (a row of ``weight``'s first dimension) by
    ``sqrt(fan_in / active_fan_in)``, in place, so the unit's input variance is the one its
    dense initialization was drawn for; a unit with no active weight is left as it is."""
    if weight.dim() < 2:
        raise ValueError(f"a fan-in needs a weight of 2+ dimensions, got shape {tuple(weight.shape)}")
    rows = weight.shape[0]
    fan_in = weight[0].numel()
    active = mask.reshape(rows, -1).sum(dim=1).to(weight.dtype)
    factor = torch.where(active > 0, (fan_in / active.clamp(min=1)).sqrt(), torch.ones_like(active))
    weight.mul_(factor.view(rows, *([1] * (weight.dim() - 1))))
    return weight
