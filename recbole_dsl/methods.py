"""The training methods of ``dsl_method``: one entry each, asked by the config and the trainer.

A method says whether it trains at the sparse budget, whether and how its masks are
explored, whether it starts dense (magnitude pruning) and which structure its embedding
masks have. Adding a method is adding an entry to :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping


@dataclass(frozen=True)
class Method:
    """How one value of ``dsl_method`` trains."""

    name: str
    summary: str
    sparse: bool = True  # trains at the sparsity budget (False: every weight of the model trains)
    explores: bool = False  # masks are pruned and grown every update_interval iterations
    growth: str = "gradient"  # gradient (DSL) or random (SET), for methods that explore
    dense_start: bool = False  # dense training, then one-shot magnitude pruning (MP)
    prunes_at_plateau: bool = False  # MP prunes its best dense model once validation plateaus, not at a fixed epoch
    embedding_structure: str = "unstructured"  # or prefix: embedding rows of variable length
    grown_init_scale: float = 0.0  # grown weights start at zero, or random at this fraction of the active RMS
    scales_model: bool = False  # a smaller dense model with as many parameters as the budget (dense_small)
    growth_gradient: str = "batch"  # growth ranks the current batch's gradient, the interval's sum, or the optimizer's momentum
    distribution: str = "uniform"  # the budget per tensor: the same density everywhere, or ERK

    @property
    def packs(self) -> bool:
        """Its embedding tables can train as their active values and positions
        (``sparse_storage``): it trains sparse from the start and ranks no optimizer state,
        which exists for the active values only."""
        return self.sparse and not self.dense_start and self.growth_gradient != "momentum"

    @property
    def full_dense(self) -> bool:
        """Every weight of the model at its configured size trains: its sparsity is 0."""
        return not self.sparse and not self.scales_model


METHODS: Dict[str, Method] = {
    method.name: method
    for method in (
        Method("dsl", "DSL: prune by magnitude, grow by gradient, cosine-annealed exchange", explores=True),
        Method("set", "DSL's schedule with random growth (SET)", explores=True, growth="random"),
        Method("rp", "static random mask, never updated"),
        Method("mp", "dense training, one-shot magnitude pruning, fine-tuning with the mask fixed", dense_start=True),
        Method(
            "mp_best",
            "mp pruning the best dense model, when the dense validation plateaus (early stopping would end the "
            "run) or after prune_epoch_fraction of the epochs, whichever comes first",
            dense_start=True,
            prunes_at_plateau=True,
        ),
        Method("dense", "every weight trains (sparsity 0)", sparse=False),
        Method(
            "dense_small",
            "the same model, dense, with its sizes scaled to as many parameters as the sparse budget",
            sparse=False,
            scales_model=True,
        ),
        Method(
            "dsl_interval",
            "DSL growing where the gradient summed since the last update is largest, with unstructured masks",
            explores=True,
            growth_gradient="interval",
        ),
        Method(
            "dsl_prefix",
            "DSL with embedding rows of variable length: pruning shortens rows, growth lengthens them",
            explores=True,
            embedding_structure="prefix",
            grown_init_scale=0.1,
        ),
        Method(
            "dsl_mixed",
            "mixed-dimension embeddings found by DSL: dsl_prefix, growing where the gradient summed since the "
            "last update is largest",
            explores=True,
            embedding_structure="prefix",
            grown_init_scale=0.1,
            growth_gradient="interval",
        ),
        Method(
            "dsl_erk",
            "dsl_mixed with Erdos-Renyi-Kernel budgets: small tensors (an MLP tower) denser, large embedding "
            "tables sparser, at the same total number of non-zeros",
            explores=True,
            embedding_structure="prefix",
            grown_init_scale=0.1,
            growth_gradient="interval",
            distribution="erk",
        ),
        Method(
            "dsl_momentum",
            "dsl_mixed growing where the optimizer's running average of the gradient (Adam's first moment) is "
            "largest: the recent batches without a buffer of its own",
            explores=True,
            embedding_structure="prefix",
            grown_init_scale=0.1,
            growth_gradient="momentum",
        ),
    )
}


def get_method(name: str) -> Method:
    return METHODS[name]


def sparsity_distribution(config: Mapping[str, Any]) -> str:
    """``sparsity_distribution``, or the method's own when it is ~ (None)."""
    return config["sparsity_distribution"] or get_method(config["dsl_method"]).distribution
