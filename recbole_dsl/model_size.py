"""The equal-budget dense baseline (``dsl_method=dense_small``): the same RecBole model with
its size settings scaled so that it has as many trainable parameters as the sparse model
of the configured sparsity has non-zeros."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple, Union

from torch import nn

from recbole_dsl.errors import DSLConfigError
from recbole_dsl.methods import sparsity_distribution
from recbole_dsl.sparse import layer_densities, round_budget, select_parameters

# The settings that hold a backbone's parameters, scaled together by one factor. Models not
# listed scale every one of these keys they have.
SIZE_KEYS: Dict[str, Tuple[str, ...]] = {
    "BPR": ("embedding_size",),
    "LightGCN": ("embedding_size",),
    "NeuMF": ("mf_embedding_size", "mlp_embedding_size", "mlp_hidden_size"),
    "MultiVAE": ("mlp_hidden_size", "latent_dimension"),
    "SASRec": ("hidden_size", "inner_size"),
}
GENERIC_SIZE_KEYS = ("embedding_size", "hidden_size", "inner_size", "mlp_hidden_size", "latent_dimension")
# Sizes that must stay multiples of a number or of another setting: attention heads split
# the hidden size, and MultiVAE splits its latent layer into a mean and a log-variance half.
MULTIPLE_OF: Dict[str, Union[int, str]] = {"hidden_size": "n_heads", "latent_dimension": 2}


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def sparse_nonzeros(model: nn.Module, config) -> int:
    """Non-zero trainable parameters of ``model`` trained at ``config['sparsity']``: the
    budgets of the sparsified tensors plus every tensor left dense."""
    names = select_parameters(model, config["sparse_params"])
    shapes = {n: model.get_parameter(n).shape for n in names}
    densities = layer_densities(shapes, 1.0 - config["sparsity"], sparsity_distribution(config))
    budget = sum(round_budget(densities[n], model.get_parameter(n).numel()) for n in names)
    return budget + trainable_params(model) - sum(model.get_parameter(n).numel() for n in names)


def size_keys(config) -> List[str]:
    keys = SIZE_KEYS.get(config["model"], GENERIC_SIZE_KEYS)
    return [k for k in keys if config[k] is not None]


def scaled_sizes(config, base: Dict[str, Any], factor: float) -> Dict[str, Any]:
    """``base`` sizes times ``factor``, rounded, at least 1 (or one multiple)."""

    def scale(key: str, value: int) -> int:
        multiple = MULTIPLE_OF.get(key, 1)
        step = int(config[multiple] or 1) if isinstance(multiple, str) else multiple
        return max(step, int(round(value * factor / step)) * step)

    return {k: [scale(k, v) for v in value] if isinstance(value, list) else scale(k, value) for k, value in base.items()}


def fit_dense_small(config, build: Callable[[], nn.Module]) -> Dict[str, Any]:
    """Scale the model's size settings in ``config`` (in place) to the sparse budget.

    ``build()`` makes the model from the current ``config``. The factor is found by
    bisection on the parameter count, then the nearer of the two sizes around the budget
    is kept. Returns the sizes, the parameter count and the budget it matches.
    """
    keys = size_keys(config)
    if not keys:
        raise DSLConfigError(
            f"dsl_method=dense_small does not know which settings size {config['model']}: "
            f"none of {', '.join(GENERIC_SIZE_KEYS)} is set"
        )
    base = {k: config[k] for k in keys}
    target = sparse_nonzeros(build(), config)
    counts: Dict[str, Tuple[int, Dict[str, Any]]] = {}

    def count(factor: float) -> int:
        sizes = scaled_sizes(config, base, factor)
        if repr(sizes) not in counts:
            for key, value in sizes.items():
                config[key] = value
            counts[repr(sizes)] = (trainable_params(build()), sizes)
        return counts[repr(sizes)][0]

    low, high = 0.0, 1.0
    for _ in range(20):
        middle = (low + high) / 2
        if count(middle) <= target:
            low = middle
        else:
            high = middle
    # Every size tried, nearest to the budget first (fewer parameters on a tie).
    _, (params, sizes) = min(counts.items(), key=lambda item: (abs(item[1][0] - target), item[1][0]))
    for key, value in sizes.items():
        config[key] = value
    return {"sizes": sizes, "params": params, "budget": target, "base_sizes": base}
