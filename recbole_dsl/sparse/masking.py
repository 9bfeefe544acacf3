"""The mask manager: exact budgets and prune/grow exploration for dynamic sparse training.

Pure PyTorch: a :class:`MaskManager` decides which entries of each sparsified tensor of a
module are active, keeps them in a storage (:mod:`~recbole_dsl.sparse.storage`) and drives
them through optimizer step hooks, so any training loop that calls ``optimizer.step()``
trains sparse without being changed. Which entries leave and join is decided by the pure
functions of :mod:`~recbole_dsl.sparse.prune_grow`; fresh optimizer state for them comes
from :mod:`~recbole_dsl.sparse.optimizer_state`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch
from torch import nn

from recbole_dsl.sparse import optimizer_state
from recbole_dsl.sparse.budgets import layer_densities, round_budget
from recbole_dsl.sparse.initialization import scale_to_active_fan_in_
from recbole_dsl.sparse.prune_grow import GROWTH_RULES, PREFIX_GROWTHS, grow, prune, row_growth_scores, uniform_prefix_mask
from recbole_dsl.sparse.schedule import CosineUpdateSchedule
from recbole_dsl.sparse.packed import PackedEmbedding
from recbole_dsl.sparse.storage import DenseMaskedStorage, MaskedStorage, PackedStorage, zero_inactive_

GROWTH_MODES = tuple(GROWTH_RULES)
GROWTH_GRADIENTS = ("batch", "interval", "momentum")


@dataclass
class MaskUpdate:
    """What one exploration step did: ``exchanged`` weights were pruned and as many grown."""

    iteration: int
    update_ratio: float
    exchanged: int
    density: float


class MaskManager:
    """Keeps a fixed budget of non-zero weights in selected tensors of a module.

    The masks are enforced through optimizer hooks (:meth:`attach`): after each step the
    weights are multiplied by their masks. That one pass is all an element-wise optimizer
    (SGD, Adam, AdamW, RMSprop, Adagrad) needs: whatever state it builds at an inactive
    entry is reset when the entry is grown, so active entries follow exactly the steps
    they would with masked gradients, and the gradients of inactive entries stay whole
    for growth to rank (zeroing them would also leave Adam's second moments at exact
    zeros, whose square root is slow on CPU). Every ``update_interval``
    iterations (see :class:`CosineUpdateSchedule`) the ``k = ceil(rho_t * nnz)`` smallest
    active weights are pruned and ``k`` inactive entries are grown: those with the
    largest gradient magnitude (``growth="gradient"``), topped up at random when fewer
    than ``k`` have a non-zero gradient, or all at random (``growth="random"``). Grown
    weights start at zero with fresh optimizer state, and the budget stays exact.

    With ``shared_budget`` all tensors form one group whose total budget is kept and
    whose weights are ranked together; otherwise every tensor keeps its own budget.
    Tensors are looked up by name, so a module that replaces a submodule keeps its masks;
    the step hooks keep the tensors of each optimizer's parameter groups, which are what
    it steps.

    With ``dense_start`` every weight stays active until :meth:`prune_by_magnitude`
    cuts each group to its budget once (magnitude pruning of a dense model). Otherwise the
    tensors of ``scaled_init_names`` start with each output unit's weights scaled to the
    fan-in its mask leaves it (:func:`~recbole_dsl.sparse.initialization.scale_to_active_fan_in_`).

    ``prefix_names`` are 2-D tensors (embedding tables) whose rows are kept active on a
    prefix of their columns (see :mod:`~recbole_dsl.sparse.prune_grow`): they start with
    row lengths that differ by at most one, and exploration moves length between rows.
    Grown entries start at zero, or with ``grown_init_scale > 0`` at random values of that
    fraction of the tensor's root-mean-square active weight: two factor tables that both
    grow a column at zero would give each other a zero gradient there for ever. With
    ``regrown_keep_values`` an entry pruned and grown back in the same update keeps its
    value and optimizer state: it was never really exchanged. Gradient growth ranks the
    current batch's gradient (``growth_gradient="batch"``, as published) or the gradient
    summed over every iteration since the previous update (``"interval"``), which sees
    every embedding row the interval's batches touched rather than one batch's, or the
    running average the optimizer already keeps of it (``"momentum"``: Adam's first moment,
    SGD's momentum buffer; the batch's gradient where the optimizer keeps none), which sees
    the recent batches too without a buffer of the manager's own. With
    ``prefix_growth="row"`` a prefix row's next columns are ranked by the row's gradient norm
    instead of their own gradient (:func:`~recbole_dsl.sparse.prune_grow.row_growth_scores`),
    so rows can grow past the columns the other factor table reaches.

    :meth:`pack` holds an ``nn.Embedding``'s weight as a
    :class:`~recbole_dsl.sparse.packed.PackedEmbedding` (its active values and their
    positions) for the rest of training, and :meth:`unpack` turns it back.
    """

    def __init__(
        self,
        module: nn.Module,
        names: Iterable[str],
        density: float,
        schedule: CosineUpdateSchedule,
        growth: str = "gradient",
        distribution: str = "uniform",
        shared_budget: bool = False,
        seed: int = 0,
        on_update: Optional[Callable[[MaskUpdate], None]] = None,
        dense_start: bool = False,
        prefix_names: Iterable[str] = (),
        grown_init_scale: float = 0.0,
        regrown_keep_values: bool = False,
        growth_gradient: str = "batch",
        scaled_init_names: Iterable[str] = (),
        prefix_growth: str = "entry",
    ) -> None:
        if not 0.0 < density <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        if growth not in GROWTH_MODES:
            raise ValueError(f"unknown growth mode {growth!r}: use one of {GROWTH_MODES}")
        if growth_gradient not in GROWTH_GRADIENTS:
            raise ValueError(f"unknown growth gradient {growth_gradient!r}: use one of {GROWTH_GRADIENTS}")
        if prefix_growth not in PREFIX_GROWTHS:
            raise ValueError(f"unknown prefix growth {prefix_growth!r}: use one of {PREFIX_GROWTHS}")
        self.module = module
        self.names = list(names)
        if not self.names:
            raise ValueError("no tensor selected for sparsification")
        self.schedule = schedule
        self.growth = growth
        self.on_update = on_update
        self.iteration = 0
        self._pending_ratio: Dict[int, float] = {}
        self._optimizers: List[torch.optim.Optimizer] = []
        self._owned: Dict[int, Tuple[int, List[Tuple[str, nn.Parameter]]]] = {}
        self._generator = torch.Generator().manual_seed(seed)
        self.grown_init_scale = grown_init_scale
        self.regrown_keep_values = regrown_keep_values
        self.growth_gradient = growth_gradient
        self.prefix_growth = prefix_growth
        self._accumulated: Dict[str, torch.Tensor] = {}
        # With a budget shared across optimizers: each tensor's gradient as of its own
        # optimizer's last step, since other optimizers never zero it.
        self._last_step_gradient: Dict[str, torch.Tensor] = {}
        self._dense_start = dense_start
        # Packed tensors: the name of the module that holds each (see pack()).
        self._packed: Dict[str, str] = {}
        # What the masks cost a run in time: host wall seconds spent in the step hooks (all
        # mask work) and, of those, in mask updates. On a GPU they time the launches only.
        self.seconds: Dict[str, float] = {"hooks": 0.0, "updates": 0.0}

        params = {name: self.param(name) for name in self.names}
        prefix_names, scaled_init_names = set(prefix_names), set(scaled_init_names)
        for argument, selected in (("prefix_names", prefix_names), ("scaled_init_names", scaled_init_names)):
            unknown = selected - set(self.names)
            if unknown:
                raise ValueError(f"{argument} {sorted(unknown)} are not among the sparsified tensors")
        for name in prefix_names:
            if params[name].dim() != 2:
                raise ValueError(f"a prefix mask needs a 2-D tensor, {name} has shape {tuple(params[name].shape)}")
        self.structures = {n: "prefix" if n in prefix_names else "unstructured" for n in self.names}
        densities = layer_densities({n: p.shape for n, p in params.items()}, density, distribution)
        self.budgets = {n: round_budget(densities[n], params[n].numel()) for n in self.names}
        self.groups: List[List[str]] = [self.names] if shared_budget else [[n] for n in self.names]
        for names in self.groups:
            self._group_structure(names)
        self.storage: Dict[str, MaskedStorage] = {}
        for name, p in params.items():
            if dense_start:
                mask = torch.ones_like(p, dtype=torch.bool)
            elif self.structures[name] == "prefix":
                mask = uniform_prefix_mask(p.shape, self.budgets[name], self._generator).to(p.device)
            else:
                mask = torch.zeros(p.numel(), dtype=torch.bool)
                mask[torch.randperm(p.numel(), generator=self._generator)[: self.budgets[name]]] = True
                mask = mask.view(p.shape).to(p.device)
            self.storage[name] = DenseMaskedStorage(mask)
        self.apply_masks()
        self.scaled_init_names = [] if dense_start else [n for n in self.names if n in scaled_init_names]
        for name in self.scaled_init_names:
            scale_to_active_fan_in_(params[name].data, self.storage[name].mask)

    # ------------------------------------------------------------------ queries
    def param(self, name: str) -> nn.Parameter:
        """The trained tensor of ``name``: the weight itself, or a packed table's values."""
        if name in self._packed:
            return self._table(name).values
        return self.module.get_parameter(name)

    def _shape(self, name: str) -> torch.Size:
        """The shape of the tensor ``name`` stands for (a packed table's dense shape)."""
        if name in self._packed:
            table = self._table(name)
            return torch.Size((table.num_rows, table.dim))
        return self.param(name).shape

    def _table(self, name: str) -> PackedEmbedding:
        return self.module.get_submodule(self._packed[name])

    @property
    def packed_names(self) -> List[str]:
        """The sparsified tensors held packed (:meth:`pack`)."""
        return list(self._packed)

    @property
    def masks(self) -> Mapping[str, torch.Tensor]:
        """Each sparsified tensor's mask (True: active), read from its storage."""
        return {name: self.storage[name].mask for name in self.names}

    def set_mask(self, name: str, mask: torch.Tensor) -> None:
        """Replace the mask of ``name`` (a tensor of its shape) and zero its inactive weights."""
        self.storage[name].set_mask(mask.to(dtype=torch.bool, device=self.storage[name].mask.device))
        with torch.no_grad():
            self.storage[name].zero_inactive(self.param(name))

    @property
    def optimizers(self) -> List[torch.optim.Optimizer]:
        """The attached optimizers, in the order they were attached."""
        return list(self._optimizers)

    @property
    def is_dense(self) -> bool:
        return all(self.budgets[n] == self.storage[n].mask.numel() for n in self.names)

    def nnz(self) -> Dict[str, int]:
        """Active entries per tensor (equal to the budget unless the budget is shared)."""
        return {n: int(self.storage[n].mask.sum()) for n in self.names}

    def numel(self) -> Dict[str, int]:
        return {n: self.storage[n].mask.numel() for n in self.names}

    def held_bytes(self) -> Dict[str, int]:
        """Bytes the manager itself holds per sparsified tensor between steps: its storage's
        (the mask and its cached multiplier), and the interval and last-step gradients it keeps."""
        held = {}
        for name in self.names:
            gradients = [self._accumulated.get(name), self._last_step_gradient.get(name)]
            held[name] = self.storage[name].held_bytes() + sum(t.numel() * t.element_size() for t in gradients if t is not None)
        return held

    def train_state_bytes(self) -> Dict[str, int]:
        """Bytes held between training steps for the sparsified tensors, read from the
        tensors: each trained tensor (the weight, or a packed table's values), its gradient
        (one of its size is made every step), every attached optimizer's state for it and
        what its storage and this manager add; ``_dense``: the same tensors at full size
        and without masks, as a dense run holds them."""
        held, dense = 0, 0
        extra, numel = self.held_bytes(), self.numel()
        for name in self.names:
            param = self.param(name)
            state = [v for optimizer in self._optimizers for v in optimizer.state.get(param, {}).values() if torch.is_tensor(v)]
            tensors = [param, param.grad if param.grad is not None else param, *state]
            held += sum(t.numel() * t.element_size() for t in tensors) + extra[name]
            dense += sum((numel[name] if t.shape == param.shape else t.numel()) * t.element_size() for t in tensors)
        return {"train_state_bytes": held, "train_state_bytes_dense": dense}

    def overall_density(self) -> float:
        return sum(self.nnz().values()) / sum(self.numel().values())

    # ------------------------------------------------------------------ masking
    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every inactive weight."""
        for name in self.names:
            self.storage[name].zero_inactive(self.param(name))

    def clip_grad_norm_(
        self, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0, **kwargs
    ) -> torch.Tensor:
        """:func:`~recbole_dsl.sparse.optimizer_state.clip_grad_norm_` with this manager's
        masks: the norm of the active entries. Returns the norm."""
        masks = {}
        for name in self.names:
            if name in self._packed:
                continue  # a packed table holds active entries only
            param = self.param(name)
            masks[id(param)] = self.storage[name].multiplier(param.dtype)
        return optimizer_state.clip_grad_norm_(parameters, masks, max_norm, norm_type, **kwargs)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Drive the masks from ``optimizer``'s steps; every attached step is one iteration."""
        self._optimizers.append(optimizer)
        if self.is_dense:
            return
        optimizer.register_step_pre_hook(self._pre_step)
        optimizer.register_step_post_hook(self._post_step)

    def _owned_tensors(self, optimizer: torch.optim.Optimizer) -> List[Tuple[str, nn.Parameter]]:
        """The sparsified tensors ``optimizer`` steps, by name, with the tensors themselves:
        found again only when its parameter groups change (every step asks, and a lookup
        by name costs more than the masking of a small tensor)."""
        size = sum(len(group["params"]) for group in optimizer.param_groups)
        cached = self._owned.get(id(optimizer))
        if cached is None or cached[0] != size:
            owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
            params = ((n, self.param(n)) for n in self.names)
            cached = (size, [(n, p) for n, p in params if id(p) in owned])
            self._owned[id(optimizer)] = cached
        return cached[1]

    @torch.no_grad()
    def _pre_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        started = time.perf_counter()
        self.iteration += 1
        if self.schedule.is_update_iteration(self.iteration):
            ratio = self.schedule.update_ratio(self.iteration)
            self._pending_ratio = {index: ratio for index in range(len(self.groups))}
        owned_params = self._owned_tensors(optimizer)
        owned = [name for name, _ in owned_params]
        if self._accumulates():
            sums, grads = [], []
            for name, param in owned_params:
                if name in self._packed:
                    self._accumulate_lookups(name)
                elif param.grad is None:
                    continue
                elif name in self._accumulated:
                    sums.append(self._accumulated[name])
                    grads.append(param.grad)
                else:
                    self._accumulated[name] = param.grad.clone()
            if sums:
                torch._foreach_add_(sums, grads)
        elif self._accumulated:
            self._accumulated.clear()  # no update is left to rank them: free the buffers
        if len(self._optimizers) > 1 and len(self.groups) == 1 < len(self.names) and self.growth == "gradient":
            # One budget over tensors of several optimizers (shared_budget): keep each
            # tensor's gradient of its own optimizer's step for updates another one fires.
            for name in owned:
                grad = self.param(name).grad
                if grad is not None:
                    self._last_step_gradient[name] = grad.detach().clone()
        due = [i for i in self._pending_ratio if any(n in owned for n in self.groups[i])]
        if due:
            ratio = self._pending_ratio[due[0]]
            update_started = time.perf_counter()
            exchanged = sum(self._update_group(self.groups[i], self._pending_ratio.pop(i), owned) for i in due)
            self.seconds["updates"] += time.perf_counter() - update_started
            if self.on_update is not None:
                self.on_update(MaskUpdate(self.iteration, ratio, exchanged, self.overall_density()))
        self.seconds["hooks"] += time.perf_counter() - started

    def _accumulates(self, iteration: Optional[int] = None) -> bool:
        """Interval gradients are summed while an update remains to rank them: up to the
        last update at or before T_end (at ``iteration``, by default the current one)."""
        end, interval = self.schedule.end_iteration, self.schedule.update_interval
        iteration = self.iteration if iteration is None else iteration
        return (
            self.growth == "gradient"
            and self.growth_gradient == "interval"
            and interval > 0
            and (end is None or iteration <= end // interval * interval)
        )

    def _accumulate_lookups(self, name: str) -> None:
        """Add a packed table's gradient of this step (its lookups') to the interval's sum,
        a dense table's worth, as the masked table's own gradient is added."""
        table = self._table(name)
        looked_up = table.lookup_gradient()
        if looked_up is None:
            return
        if name not in self._accumulated:
            self._accumulated[name] = torch.zeros(table.num_rows, table.dim, dtype=table.values.dtype, device=table.values.device)
        self._accumulated[name].index_add_(0, *looked_up)

    def _growth_gradient(self, name: str, param: nn.Parameter, current: bool = True) -> torch.Tensor:
        """What growth ranks: the interval's summed gradient, the optimizer's running average
        of it, or the batch's; for a tensor
        of another optimizer than the one stepping (``current`` False), the gradient of its
        own optimizer's last step, not a ``.grad`` that optimizer has not zeroed since."""
        if self.growth_gradient == "interval" and name in self._accumulated:
            return self._accumulated[name].abs()
        if self.growth_gradient == "momentum":
            moment = optimizer_state.first_moment(self._optimizers, param)
            if moment is not None:
                return moment.abs()
        if not current:
            last = self._last_step_gradient.get(name)
            return last.abs() if last is not None else torch.zeros_like(param)
        if name in self._packed:
            return self._table(name).dense_lookup_gradient().abs()
        return param.grad.detach().abs() if param.grad is not None else torch.zeros_like(param)

    @torch.no_grad()
    def _post_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        started = time.perf_counter()
        owned = self._owned_tensors(optimizer)
        zero_inactive_([self.storage[name] for name, _ in owned], [param for _, param in owned])
        self._prepare_lookups()
        self.seconds["hooks"] += time.perf_counter() - started

    def _prepare_lookups(self) -> None:
        """Packed tables keep their lookups' gradients for the next step only when it
        updates the masks or adds to the interval's gradient: growth ranks them, and no
        other step needs them."""
        keep = self.schedule.is_update_iteration(self.iteration + 1) or self._accumulates(self.iteration + 1)
        for name in self._packed:
            table = self._table(name)
            table.looked_up = []
            table.keep_lookup_gradient = keep

    # ------------------------------------------------------------------ packed storage
    def pack(self, name: str) -> None:
        """Hold ``name``, the weight of an ``nn.Embedding``, as its active values and their
        positions from now on: the model's module is replaced by a
        :class:`~recbole_dsl.sparse.packed.PackedEmbedding` and optimizers built afterwards
        step the values alone. DSL's exploration with unstructured masks and the batch's
        gradient is made on that layout; structured masks, random growth and growth by the
        interval's gradient on a dense view of the table built for the update (the
        interval's sum is a dense table's worth while it is kept). A budget shared with
        other tensors, growth by the optimizer's momentum (kept for the active values
        only), regrown entries that keep their values and a dense start raise ValueError."""
        if self._optimizers:
            raise ValueError("tables are packed before any optimizer is attached")
        module_name, _, attribute = name.rpartition(".")
        module = self.module.get_submodule(module_name) if attribute == "weight" else None
        reasons = {
            "it is not the weight of an nn.Embedding": type(module) is not nn.Embedding,
            "the embedding has sparse gradients, max_norm or scale_grad_by_freq": type(module) is nn.Embedding
            and (module.sparse or module.max_norm is not None or module.scale_grad_by_freq),
            "growth ranks the optimizer's momentum, which it keeps for the active values only": self.growth == "gradient"
            and self.growth_gradient == "momentum",
            "its budget is shared with other tensors": any(name in g and len(g) > 1 for g in self.groups),
            "regrown entries keep their values": self.regrown_keep_values,
            "it trains dense first": self._dense_start,
        }
        failed = [reason for reason, fails in reasons.items() if fails]
        if failed:
            raise ValueError(f"{name} cannot be packed: {failed[0]}")
        table = PackedEmbedding.from_dense(module.weight, self.storage[name].mask, module.padding_idx)
        self.module.set_submodule(module_name, table)
        self._packed[name] = module_name
        self.storage[name] = PackedStorage(table)
        self._prepare_lookups()

    def unpack(self) -> None:
        """Every packed table back to an ``nn.Embedding`` holding it dense with its mask (to
        evaluate or count a trained model as a masked one); optimizers stop stepping it."""
        for name, module_name in self._packed.items():
            table = self._table(name)
            self.storage[name] = DenseMaskedStorage(table.mask())
            self.module.set_submodule(module_name, table.to_embedding())
        self._packed.clear()
        self._owned.clear()

    # ------------------------------------------------------------------ exploration
    @torch.no_grad()
    def update_masks(self, update_ratio: float) -> int:
        """Prune and grow every group now; returns the number of weights exchanged."""
        exchanged = sum(self._update_group(group, update_ratio) for group in self.groups)
        if self.on_update is not None:
            self.on_update(MaskUpdate(self.iteration, update_ratio, exchanged, self.overall_density()))
        return exchanged

    @torch.no_grad()
    def prune_by_magnitude(self) -> int:
        """Keep the budget's largest-magnitude active weights of every group, zero the
        rest with fresh optimizer state; returns the number of weights pruned."""
        pruned_total = 0
        for names in self.groups:
            params = [self.param(n) for n in names]
            mask = torch.cat([self.storage[n].mask.flatten() for n in names])
            budget = sum(self.budgets[n] for n in names)
            excess = int(mask.sum()) - budget
            if excess <= 0:
                continue
            magnitude = torch.cat([p.detach().abs().flatten() for p in params]).masked_fill(~mask, math.inf)
            pruned = torch.topk(magnitude, excess, largest=False).indices
            mask[pruned] = False
            self._write_group(names, params, mask, pruned)
            pruned_total += excess
        return pruned_total

    def _group_structure(self, names: List[str]) -> str:
        """The mask structure of a group: prefix only when all its tensors are prefix
        tables of one width (they are then ranked as one table of stacked rows)."""
        structures = {self.structures[n] for n in names}
        if structures == {"unstructured"}:
            return "unstructured"
        widths = {self._shape(n)[1] for n in names if self.structures[n] == "prefix"}
        if len(structures) > 1 or len(widths) > 1:
            raise ValueError(f"tensors {names} share a budget but not one mask structure and width")
        return "prefix"

    def _stacked(self, tensors: List[torch.Tensor], structure: str) -> torch.Tensor:
        """A group's tensors as one: rows stacked (prefix) or flattened and concatenated.
        Both orders give the same flat index of every entry."""
        if len(tensors) == 1:
            return tensors[0] if structure == "prefix" else tensors[0].flatten()
        if structure == "prefix":
            return torch.cat(tensors, dim=0)
        return torch.cat([t.flatten() for t in tensors])

    @torch.no_grad()
    def _update_group(self, names: List[str], update_ratio: float, stepping: Optional[List[str]] = None) -> int:
        """Prune and grow one group; ``stepping``: the tensors of the optimizer whose step
        makes the update (None: every tensor's ``.grad`` is current)."""
        packed = names[0] in self._packed
        if packed:
            table = self._table(names[0])
            if table.active in (0, table.num_rows * table.dim):
                return 0
            if self.structures[names[0]] == "unstructured" and self.growth == "gradient" and self.growth_gradient == "batch":
                return table.exchange(math.ceil(update_ratio * table.active), self._optimizers, self._generator)
        # A packed table is seen as its dense weight: a copy, built for this update only.
        params = [self._table(names[0]).weight if packed else self.param(n) for n in names]
        structure = self._group_structure(names)
        mask = self._stacked([self.storage[n].mask for n in names], structure).clone()  # the new mask
        nnz = int(mask.sum())
        if nnz == mask.numel() or nnz == 0:
            return 0
        k = math.ceil(update_ratio * nnz)
        if k == 0:
            return 0
        magnitude = self._stacked([p.detach().abs() for p in params], structure)
        pruned = prune(magnitude, mask, k, structure, self._generator)
        mask.view(-1)[pruned] = False

        gradient = None
        if self.growth == "gradient":
            gradient = self._stacked(
                [self._growth_gradient(n, p, stepping is None or n in stepping) for n, p in zip(names, params)], structure
            )
            if structure == "prefix" and self.prefix_growth == "row":
                gradient = row_growth_scores(gradient, mask)
        scores = GROWTH_RULES[self.growth](mask.shape, gradient, self._generator).to(mask.device)
        grown = grow(scores, mask, k, structure, self._generator)
        mask.view(-1)[grown] = True
        if self.regrown_keep_values:
            regrown = torch.isin(grown, pruned)
            pruned, grown = pruned[~torch.isin(pruned, grown)], grown[~regrown]

        if packed:
            batch_gradient = self._table(names[0]).dense_lookup_gradient()
            self._write_group(names, params, mask.flatten(), torch.cat([pruned, grown]), grown)
            self._table(names[0]).relayout(mask, grown, params[0], batch_gradient, self._optimizers)
        else:
            self._write_group(names, params, mask.flatten(), torch.cat([pruned, grown]), grown)
        for name in names:
            self._accumulated.pop(name, None)
        return int(grown.numel())

    def _write_group(
        self,
        names: List[str],
        params: List[nn.Parameter],
        mask: torch.Tensor,
        changed: torch.Tensor,
        grown: Optional[torch.Tensor] = None,
    ) -> None:
        """Split a group's flat mask back into its tensors; changed entries start at zero
        (grown ones at small random values with ``grown_init_scale``) with fresh
        optimizer state. A packed table's tensor is its dense view, whose layout is the
        caller's to set from it."""
        offset = 0
        for name, p in zip(names, params):
            numel = p.numel()
            local = changed[(changed >= offset) & (changed < offset + numel)] - offset
            old_mask = self.storage[name].mask
            new_mask = mask[offset : offset + numel].view(p.shape).clone()
            if name not in self._packed:
                self.storage[name].set_mask(new_mask)
            flat = p.view(-1)
            if grown is not None and self.grown_init_scale > 0:
                kept = flat[old_mask.flatten() & new_mask.flatten()]
                scale = self.grown_init_scale * float(kept.pow(2).mean().sqrt()) if kept.numel() else 0.0
                local_grown = grown[(grown >= offset) & (grown < offset + numel)] - offset
                flat[local] = 0.0
                flat[local_grown] = scale * torch.randn(local_grown.numel(), generator=self._generator).to(flat)
            else:
                flat[local] = 0.0
            optimizer_state.reset_optimizer_state(self._optimizers, p, local)
            offset += numel

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """Plain tensors and numbers only, so it loads with ``torch.load(weights_only=True)``."""
        return {
            "masks": {n: m.clone() for n, m in self.masks.items()},
            "budgets": dict(self.budgets),
            "iteration": self.iteration,
            "end_iteration": self.schedule.end_iteration,
            "pending_ratio": dict(self._pending_ratio),
            "generator": self._generator.get_state(),
            "accumulated": {n: g.clone() for n, g in self._accumulated.items()},
            "seconds": dict(self.seconds),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict, masks_only: bool = False) -> None:
        """Restore masks and budgets and, unless ``masks_only`` (a model loaded to be
        evaluated), the training state: iteration, schedule, pending updates, generator."""
        missing = set(self.names) - set(state["masks"])
        if missing:
            raise KeyError(f"sparse state has no mask for {sorted(missing)}")
        for name in self.names:
            mask, current = state["masks"][name], self.storage[name].mask
            if mask.shape != current.shape:
                raise ValueError(f"mask of {name} has shape {tuple(mask.shape)}, expected {tuple(current.shape)}")
            self.storage[name].set_mask(mask.to(dtype=torch.bool, device=current.device))
        self.budgets = {n: int(state["budgets"][n]) for n in self.names}
        if masks_only:
            self.apply_masks()
            return
        self.iteration = int(state["iteration"])
        self.schedule.end_iteration = state["end_iteration"]
        self._pending_ratio = {int(k): float(v) for k, v in state["pending_ratio"].items()}
        self._generator.set_state(state["generator"])
        self._accumulated = {n: g.to(self.storage[n].mask.device) for n, g in state.get("accumulated", {}).items()}
        self.seconds = {key: float(state.get("seconds", {}).get(key, 0.0)) for key in self.seconds}
        self.apply_masks()
        self._prepare_lookups()
