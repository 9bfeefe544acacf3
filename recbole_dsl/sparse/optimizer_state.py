"""What the optimizers must see of a sparse model, and what it reads of them: fresh state at
exchanged entries, a gradient norm over the active entries only, and the gradient's running
average for momentum growth."""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch
from torch import nn


@torch.no_grad()
def reset_optimizer_state(optimizers: Iterable[torch.optim.Optimizer], param: nn.Parameter, positions: torch.Tensor) -> None:
    """Give the entries of ``param`` at flat ``positions`` fresh state in every optimizer that
    steps it (Adam's moments, Adagrad's sums, momentum buffers, ...)."""
    for optimizer in optimizers:
        state = optimizer.state.get(param)
        if not state:
            continue
        group = next(g for g in optimizer.param_groups if any(q is param for q in g["params"]))
        initial_sum = group.get("initial_accumulator_value", 0.0)
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.view(-1)[positions] = initial_sum if key == "sum" else 0.0


def first_moment(optimizers: Iterable[torch.optim.Optimizer], param: nn.Parameter) -> Optional[torch.Tensor]:
    """The running average of ``param``'s gradient that an optimizer keeps for it (Adam's and
    AdamW's ``exp_avg``, SGD's ``momentum_buffer``), or None when none keeps one yet."""
    for optimizer in optimizers:
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "momentum_buffer"):
            value = state.get(key)
            if torch.is_tensor(value) and value.shape == param.shape:
                return value
    return None


@torch.no_grad()
def clip_grad_norm_(
    parameters: Iterable[torch.Tensor], masks: Dict[int, torch.Tensor], max_norm: float, norm_type: float = 2.0, **kwargs
) -> torch.Tensor:
    """:func:`torch.nn.utils.clip_grad_norm_` of a sparse model: the norm counts only the
    active entries of the tensors in ``masks`` (keyed by ``id`` of the tensor, multipliers
    in its dtype), whose inactive gradients stay whole for growth to rank; every gradient is
    scaled by the one coefficient. Returns the norm."""
    parameters: List[torch.Tensor] = [p for p in parameters if p.grad is not None]
    gradients = [p.grad.mul(masks[id(p)]) if id(p) in masks else p.grad for p in parameters]
    error_if_nonfinite = kwargs.pop("error_if_nonfinite", False)
    foreach = kwargs.pop("foreach", None)
    if kwargs:
        raise TypeError(f"clip_grad_norm_ got unexpected arguments {sorted(kwargs)}")
    total_norm = torch.nn.utils.get_total_norm(gradients, norm_type, error_if_nonfinite, foreach)
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)
    return total_norm
