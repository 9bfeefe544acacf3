"""Cost figures of a finished DSL run: MACs of inference and of the whole training run,
dense and sparse, the bytes of the model stored densely and in the compact format, and
the measured epoch time and peak memory."""

from __future__ import annotations

import inspect
import math
import resource
import time
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch
from recbole.data.dataloader import FullSortEvalDataLoader
from recbole.model.abstract_recommender import AbstractRecommender
from recbole.utils import KGDataLoaderState
from torch import nn

from recbole_dsl.costs.compact import encode
from recbole_dsl.costs.macs import MacCount, MacCounter
from recbole_dsl.trainer import DSLTrainerMixin, clear_cached_embeddings


def parameter_masks(trainer: DSLTrainerMixin) -> Dict[nn.Parameter, torch.Tensor]:
    """Each sparsified parameter with its mask."""
    return {trainer.mask_manager.param(name): mask for name, mask in trainer.mask_manager.masks.items()}


def count_inference(trainer: DSLTrainerMixin, eval_data) -> MacCount:
    """MACs of one evaluation pass as RecBole runs it (full sort over every evaluation
    user, or the sampled candidates of a sampled protocol), cached embeddings rebuilt.

    A full sort is counted on large batches of users when the model's count adds up over
    users (:func:`count_full_sort_in_chunks`): RecBole scores ``eval_batch_size // n_items``
    users per batch, one on a catalogue larger than that, and counting batch by batch
    would take many times the test pass itself."""
    clear_cached_embeddings(trainer.model)
    count = None
    if isinstance(eval_data, FullSortEvalDataLoader) and not torch.distributed.is_initialized():
        count = count_full_sort_in_chunks(trainer, eval_data)
    if count is None:
        clear_cached_embeddings(trainer.model)
        with MacCounter(parameter_masks(trainer)) as counter:
            trainer.evaluate(eval_data, load_best_model=False, show_progress=False)
        count = counter.count
    clear_cached_embeddings(trainer.model)
    return count


# Scores of one counted chunk of a full sort (users times items): 64 MiB of fp32.
CHUNK_SCORES = 2**24
# Pairs a model without a full sort of its own predicts at once while its count runs on
# shapes and masks only (RecBole: eval_batch_size): an operation that needs a mask whole
# then holds one row of it per pair.
COUNTED_PAIRS = 2**18


def scoring_batch(eval_data: FullSortEvalDataLoader, users: range) -> tuple:
    """RecBole's full-sort batch of ``users`` as the model sees it. For a general model the
    history index that RecBole builds to mask items seen in training is left out: masking
    costs no MACs, and building it user by user in Python takes longer than counting."""
    if eval_data.is_sequential:
        return eval_data.collate_fn(list(users))
    return eval_data.user_df[np.array(users)], None, None, None


@torch.no_grad()
def count_full_sort_in_chunks(trainer: DSLTrainerMixin, eval_data: FullSortEvalDataLoader) -> Optional[MacCount]:
    """The MACs of RecBole's full-sort pass, counted on chunks of many of its batches at a
    time; None when the model's count of two batches together is not the sum of theirs
    (work per batch that does not grow with its users), for the caller to count batch by
    batch. Work the pass does once and caches (LightGCN's propagation) is the difference
    between the first batch counted first and counted again, and is added once.

    Where the first two batches count the same without their values (shapes and masks
    only, :class:`MacCounter` with ``values=False``) and with more pairs per prediction,
    the chunks are counted that way: the count then does not repeat the model's work."""
    step, size = eval_data.step, eval_data.sample_size
    if size < 2 * step:
        return None
    clear_cached_embeddings(trainer.model)
    trainer.model.eval()
    trainer.tot_item_num = eval_data._dataset.item_num
    if trainer.item_tensor is None:
        trainer.item_tensor = eval_data._dataset.get_item_feature().to(trainer.device)

    masks = parameter_masks(trainer)
    recbole_pairs = trainer.test_batch_size

    def count(*chunks: range, values: bool = True) -> MacCount:
        counter = MacCounter(masks, values=values)  # one for all chunks: its set-up reads every mask
        trainer.test_batch_size = recbole_pairs if values else max(recbole_pairs, COUNTED_PAIRS)
        try:
            for chunk in chunks:
                batch = scoring_batch(eval_data, chunk)  # not counted
                with counter:
                    trainer._full_sort_batch_eval(batch)
        finally:
            trainer.test_batch_size = recbole_pairs
        return counter.count

    first, second = range(0, step), range(step, 2 * step)
    with_cached_work = count(first)  # what the pass computes once and caches comes with its first batch
    first_alone, second_alone = count(first), count(second)
    together = count(range(0, 2 * step))
    if together != first_alone + second_alone:
        return None
    width = max(step, CHUNK_SCORES // trainer.tot_item_num)
    chunks = [range(start, min(start + width, size)) for start in range(0, size, width)]
    counted = None
    try:
        if count(range(0, 2 * step), values=False) == together:
            counted = count(*chunks, values=False)
    except Exception:  # a model that cannot run on uninitialised values (an index read from them)
        counted = None
    if counted is None:
        counted = count(*chunks)
    return with_cached_work - first_alone + counted


def count_training_step(trainer: DSLTrainerMixin, train_data, max_batches: int) -> MacCount:
    """Average MACs of one training step over the first ``max_batches`` batches: the
    model's loss as the trainer computes it, and the backward derived from it."""
    model = trainer.model
    calculate_loss = model.calculate_loss
    if type(model).calculate_loss is AbstractRecommender.calculate_loss and hasattr(model, "calculate_rs_loss"):
        calculate_loss = model.calculate_rs_loss  # MKR: its recommendation loss (the trainer adds KG steps)
        train_data.set_mode(KGDataLoaderState.RS)
    loss_kwargs = {"encoder_flag": True} if "encoder_flag" in inspect.signature(calculate_loss).parameters else {}
    # A forward pass in training mode moves batch-norm statistics: keep the trained ones.
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    model.train()
    total, batches = MacCount(), 0
    for interaction in train_data:
        if batches == max_batches:
            break
        interaction = interaction.to(trainer.device)
        with MacCounter(parameter_masks(trainer)) as counter:
            calculate_loss(interaction, **loss_kwargs)
        total, batches = total + counter.count, batches + 1
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    clear_cached_embeddings(model)
    return total.scaled(1 / max(batches, 1))


def training_macs(trainer: DSLTrainerMixin, step: MacCount) -> Dict[str, int]:
    """The whole run: sparse steps, the dense gradients of each gradient-growth update, and
    the dense steps of a method that trains dense before pruning; against the same number
    of dense steps."""
    steps = trainer.optimizer_steps
    dense_steps = trainer.dense_iterations
    growth_extra = trainer.gradient_growth_updates * (step.growth_backward - step.backward)
    sparse = (steps - dense_steps) * step.training_step + dense_steps * step.training_step_dense + growth_extra
    return {"train_macs": sparse, "train_macs_dense": steps * step.training_step_dense}


def storage_bytes(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> Dict[str, int]:
    """Bytes of the state dict stored densely and in the compact format, and non-zeros."""
    state = model.state_dict()
    params = dict(model.named_parameters())
    return {
        "param_bytes_dense": sum(t.numel() * t.element_size() for t in state.values()),
        "param_bytes_compact": len(encode(state, masks)),
        "params": sum(p.numel() for p in params.values()),
        "nonzero_params": sum(int(masks[n].sum()) if n in masks else p.numel() for n, p in params.items()),
    }


def train_state_bytes(trainer: DSLTrainerMixin) -> Dict[str, int]:
    """What the sparsified tensors held between training steps
    (:meth:`~recbole_dsl.sparse.MaskManager.train_state_bytes`), as read when training ended."""
    return getattr(trainer, "train_state", None) or trainer.mask_manager.train_state_bytes()


def peak_memory_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_costs(trainer: DSLTrainerMixin, train_data, eval_data) -> Dict[str, Any]:
    """Every cost figure of a finished run, as plain numbers for the results JSON. Peak
    memory is read first: it is the run's, not that of the counting."""
    peak_rss_bytes = peak_memory_bytes()
    state_bytes = train_state_bytes(trainer)
    started = time.perf_counter()
    inference = count_inference(trainer, eval_data)
    inference_count_seconds = time.perf_counter() - started
    step = count_training_step(trainer, train_data, trainer.config["cost_batches"])
    seconds = trainer.epoch_seconds
    costs = {
        "inference_macs": inference.forward,
        "inference_macs_dense": inference.forward_dense,
        **training_macs(trainer, step),
        **storage_bytes(trainer.model, trainer.mask_manager.masks),
        **state_bytes,
        "optimizer_steps": trainer.optimizer_steps,
        "gradient_growth_updates": trainer.gradient_growth_updates,
        "epochs_trained": len(seconds),
        "epoch_seconds": sum(seconds) / len(seconds) if seconds else math.nan,
        # Of the training time, what the masks' step hooks took, and their updates alone.
        "mask_seconds": trainer.mask_manager.seconds["hooks"],
        "mask_update_seconds": trainer.mask_manager.seconds["updates"],
        "peak_rss_bytes": peak_rss_bytes,
        "inference_count_seconds": inference_count_seconds,
        "processes": 1,
    }
    if torch.distributed.is_initialized():
        costs.update(whole_job(costs))
    return costs


# Figures that add up over the processes of a distributed run: each trains on its share of
# the batches and tests its share of the users. Steps, epochs and bytes of the model are
# those of one process, as all of them step together on one copy of the model.
SUMMED_OVER_PROCESSES = (
    "inference_macs", "inference_macs_dense", "train_macs", "train_macs_dense", "train_state_bytes", "train_state_bytes_dense",
    "peak_rss_bytes", "processes",
)


def whole_job(costs: Mapping[str, Any]) -> Dict[str, int]:
    """The figures of :data:`SUMMED_OVER_PROCESSES` summed over every process."""
    totals = torch.tensor([int(costs[key]) for key in SUMMED_OVER_PROCESSES], dtype=torch.int64)
    torch.distributed.all_reduce(totals)
    return dict(zip(SUMMED_OVER_PROCESSES, (int(v) for v in totals)))


def format_costs(costs: Mapping[str, Any]) -> str:
    """The cost figures as a short table for the log."""

    def row(label: str, sparse: float, dense: float) -> str:
        ratio = f"{sparse / dense:8.4f}" if dense else "       -"
        return f"    {label:<18} {sparse:>16,.0f} {dense:>16,.0f} {ratio}"

    lines = [
        f"    {'':<18} {'this run':>16} {'dense':>16}    ratio",
        row("inference MACs", costs["inference_macs"], costs["inference_macs_dense"]),
        row("training MACs", costs["train_macs"], costs["train_macs_dense"]),
        row("parameter bytes", costs["param_bytes_compact"], costs["param_bytes_dense"]),
        row("non-zero params", costs["nonzero_params"], costs["params"]),
        row("training state", costs["train_state_bytes"], costs["train_state_bytes_dense"]),
        f"    epoch time {costs['epoch_seconds']:.2f} s (mean of {costs['epochs_trained']}; masks "
        f"{costs['mask_seconds']:.2f} s in all, updates {costs['mask_update_seconds']:.2f} s), "
        f"peak memory {costs['peak_rss_bytes'] / 2**20:,.0f} MiB",
    ]
    return "\n".join(lines)
