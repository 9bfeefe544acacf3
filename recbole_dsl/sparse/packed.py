"""A sparse embedding table held as its active values and their positions.

:class:`PackedEmbedding` keeps only the budget: a 1-D parameter of the active values and,
row by row, the columns they sit in (compressed sparse rows, each index in the narrowest
integer type that fits). The optimizer steps the values alone, so parameters, gradients
and optimizer state all shrink with density; a lookup gathers the batch's rows into a
dense ``(batch, dim)`` tensor. :meth:`PackedEmbedding.exchange` is DSL's prune and grow
on this layout: prune the active values of smallest magnitude, grow the inactive entries
of largest gradient among the rows the last batch looked up (entries without a gradient
come after them in random order, as in :func:`~recbole_dsl.sparse.prune_grow.gradient_growth`),
then rebuild the layout and carry the optimizer state of the kept values over.
:meth:`PackedEmbedding.relayout` takes a layout decided elsewhere (the mask manager's prune
and grow on a dense view of the table, for structured masks and other growth rules) and
carries values, gradients and optimizer state over the same way.
"""

from __future__ import annotations

from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch import nn


def narrowest_index_dtype(largest: int) -> torch.dtype:
    """The smallest integer dtype that holds every value in ``[0, largest]``."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if largest <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def random_layout(
    num_rows: int,
    dim: int,
    active: int,
    generator: Optional[torch.Generator] = None,
    init_std: float = 0.1,
    chunk_rows: int = 1 << 20,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sorted flat keys and normal values of ``active`` entries of a ``num_rows x dim``
    table: rows get ``active // num_rows`` or one more entries at random columns, drawn
    ``chunk_rows`` rows at a time so that no dense table is ever built."""
    if not 0 < active <= num_rows * dim:
        raise ValueError(f"active={active} must be in (0, {num_rows * dim}]")
    base, extra = divmod(active, num_rows)
    lengths = torch.full((num_rows,), base, dtype=torch.int64)
    lengths[torch.randperm(num_rows, generator=generator)[:extra]] += 1
    keys = torch.empty(active, dtype=torch.int64)
    filled = 0
    for start in range(0, num_rows, chunk_rows):
        rows = torch.arange(start, min(start + chunk_rows, num_rows))
        longest = int(lengths[rows].max())
        drawn = torch.rand(len(rows), dim, generator=generator).topk(longest, dim=1).indices  # in random order
        chosen = torch.arange(longest).unsqueeze(0) < lengths[rows].unsqueeze(1)
        columns = torch.sort(drawn.masked_fill(~chosen, dim), dim=1).values
        chunk = (rows.unsqueeze(1) * dim + columns)[columns < dim]
        keys[filled: filled + chunk.numel()] = chunk
        filled += chunk.numel()
    return keys, torch.randn(active, generator=generator) * init_std


class PackedEmbedding(nn.Module):
    """An ``num_rows x dim`` embedding table whose non-zeros (flat ``keys``, ascending,
    with their ``values``) are all it holds.

    ``values`` (the parameter) lists the active entries row by row, columns ascending;
    ``row_offsets[r]:row_offsets[r + 1]`` are row ``r``'s entries and ``columns`` their
    columns. It stands in for an ``nn.Embedding`` in a model: a call looks rows up,
    :attr:`weight` is the dense table for code that reads it whole, and its state dict
    holds that dense ``weight``, so checkpoints read the same as a masked table's.
    ``padding_idx`` rows get no gradient from lookups, as in ``nn.Embedding``.
    """

    def __init__(self, num_rows: int, dim: int, keys: torch.Tensor, values: torch.Tensor, padding_idx: Optional[int] = None) -> None:
        super().__init__()
        if keys.shape != values.shape or keys.dim() != 1:
            raise ValueError(f"keys {tuple(keys.shape)} and values {tuple(values.shape)} must be two vectors of one length")
        self.num_rows, self.dim = num_rows, dim
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_rows, dim, padding_idx
        self.values = nn.Parameter(values)
        self.register_buffer("row_offsets", torch.zeros(0), persistent=False)
        self.register_buffer("columns", torch.zeros(0), persistent=False)
        self._set_layout(keys.to(values.device))
        # With keep_lookup_gradient set (on a step that exchanges), each lookup's rows and
        # dense output, whose gradient growth ranks; exchange() clears them.
        self.looked_up: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.keep_lookup_gradient = False

    @classmethod
    def random(cls, num_rows: int, dim: int, active: int, generator: Optional[torch.Generator] = None, **layout) -> "PackedEmbedding":
        """A table of ``active`` random entries (:func:`random_layout`), built without a dense table."""
        return cls(num_rows, dim, *random_layout(num_rows, dim, active, generator, **layout))

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor, padding_idx: Optional[int] = None) -> "PackedEmbedding":
        """The entries of ``weight`` where ``mask`` is True."""
        keys = mask.flatten().nonzero().flatten()
        return cls(weight.shape[0], weight.shape[1], keys, weight.detach().flatten()[keys].clone(), padding_idx)

    def _set_layout(self, keys: torch.Tensor) -> None:
        """Rows and columns from sorted flat keys ``row * dim + column``."""
        rows = keys // self.dim
        self._set_offsets(torch.bincount(rows, minlength=self.num_rows))
        self.columns = (keys - rows * self.dim).to(narrowest_index_dtype(self.dim - 1))

    def _set_offsets(self, counts: torch.Tensor) -> None:
        offsets = torch.zeros(self.num_rows + 1, dtype=torch.int64, device=counts.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        self.row_offsets = offsets.to(narrowest_index_dtype(int(offsets[-1])))

    @property
    def active(self) -> int:
        return self.values.numel()

    def keys(self) -> torch.Tensor:
        """Flat positions ``row * dim + column`` of the active values, ascending."""
        counts = (self.row_offsets[1:] - self.row_offsets[:-1]).long()
        keys = torch.repeat_interleave(torch.arange(self.num_rows, device=counts.device), counts)
        return keys.mul_(self.dim).add_(self.columns)

    def mask(self) -> torch.Tensor:
        """The boolean ``num_rows x dim`` mask of the active entries (built on each call)."""
        mask = torch.zeros(self.num_rows * self.dim, dtype=torch.bool, device=self.values.device)
        mask[self.keys()] = True
        return mask.view(self.num_rows, self.dim)

    @property
    def weight(self) -> torch.Tensor:
        """The dense table, zero outside the budget, for code that reads the whole table
        (a graph propagation, a full-sort score); its gradient reaches the values and, with
        ``keep_lookup_gradient`` set, every row's gradient is kept for growth."""
        dense = torch.zeros(self.num_rows * self.dim, dtype=self.values.dtype, device=self.values.device)
        dense = dense.index_put((self.keys(),), self.values).view(self.num_rows, self.dim)
        if self.keep_lookup_gradient and dense.requires_grad:
            dense.retain_grad()
            self.looked_up.append((torch.arange(self.num_rows, device=dense.device), dense))
        return dense

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Make ``mask`` (as many entries as the budget) the layout; entries active before
        keep their values, new ones start at zero. Optimizer state is the caller's."""
        keys = mask.flatten().nonzero().flatten().to(self.values.device)
        if keys.numel() != self.active:
            raise ValueError(f"a packed table keeps its budget of {self.active} entries, the mask has {keys.numel()}")
        values = self.weight.flatten()[keys]
        self._set_layout(keys)
        self.values.data = values
        self.looked_up = []

    def to_embedding(self) -> nn.Embedding:
        """The table as an ``nn.Embedding`` holding it dense."""
        embedding = nn.Embedding(self.num_rows, self.dim, padding_idx=self.padding_idx, device=self.values.device, dtype=self.values.dtype)
        with torch.no_grad():
            embedding.weight.copy_(self.weight)
        return embedding

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # The dense weight, as an nn.Embedding's: checkpoints and compact files read the same
        # in both modes (the layout is the mask, which the caller saves).
        weight = self.weight
        destination[prefix + "weight"] = weight if keep_vars else weight.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """Take the values at the current layout from a dense ``weight``: set the mask first."""
        key = prefix + "weight"
        if key not in state_dict:
            missing_keys.append(key)
            return
        weight = state_dict[key]
        if tuple(weight.shape) != (self.num_rows, self.dim):
            error_msgs.append(f"size mismatch for {key}: copying a param with shape {tuple(weight.shape)}, the table is {(self.num_rows, self.dim)}")
            return
        with torch.no_grad():
            self.values.copy_(weight.flatten().to(self.values.device)[self.keys()])

    def _entries(self, rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For each active entry of ``rows``: its batch position, column and value index."""
        start = self.row_offsets[rows].long()
        lengths = self.row_offsets[rows + 1].long() - start
        owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), lengths)
        first = torch.cumsum(lengths, 0) - lengths
        index = torch.arange(owner.numel(), device=rows.device) - first[owner] + start[owner]
        return owner, self.columns[index].long(), index

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """The dense ``(*rows.shape, dim)`` rows; with ``keep_lookup_gradient`` set, the
        looked-up rows keep their gradient for the next :meth:`exchange`."""
        flat_rows = rows.reshape(-1)
        owner, columns, index = self._entries(flat_rows)
        dense = torch.zeros(flat_rows.numel(), self.dim, dtype=self.values.dtype, device=self.values.device)
        dense = dense.index_put((owner, columns), self.values.index_select(0, index))
        if self.keep_lookup_gradient and dense.requires_grad:
            dense.retain_grad()
            self.looked_up.append((flat_rows, dense))
        if self.padding_idx is not None and dense.requires_grad:
            dense = torch.where((flat_rows == self.padding_idx).unsqueeze(1), dense.detach(), dense)
        return dense.view(*rows.shape, self.dim)

    @torch.no_grad()
    def exchange(self, k: int, optimizers: Iterable[torch.optim.Optimizer], generator: Optional[torch.Generator] = None) -> int:
        """DSL's prune and grow between a backward pass and the optimizer step, as the mask
        manager makes them: prune the ``k`` active values of smallest magnitude, grow ``k``
        entries inactive after it (a pruned one may come back), those of largest gradient
        in the rows the last batch looked up first, then random ones. Exchanged entries
        start at zero with fresh optimizer state, and grown ones take their lookup gradient
        for the step that follows. Returns the number grown."""
        k = min(k, self.active)
        if k <= 0:
            return 0
        # Kept entries stay in order and grown ones are merged in by binary search: no sort
        # of the whole layout, so the update needs a few bytes per active value beyond it.
        keys = self.keys()
        device = self.values.device
        kept = torch.ones(self.active, dtype=torch.bool, device=device)
        kept[torch.topk(self.values.abs(), k, largest=False).indices] = False
        kept_keys = keys[kept]
        del keys
        grown, grown_gradient = self._grow(kept_keys, k, generator)
        grown, order = torch.sort(grown)
        grown_gradient = grown_gradient[order]
        is_grown = torch.zeros(self.active, dtype=torch.bool, device=device)
        is_grown[torch.searchsorted(kept_keys, grown) + torch.arange(k, device=device)] = True
        is_kept = ~is_grown

        def carried(tensor: torch.Tensor, fill: Optional[torch.Tensor] = None) -> torch.Tensor:
            moved = torch.empty_like(tensor)
            moved[is_kept] = tensor[kept]
            moved[is_grown] = 0 if fill is None else fill.to(moved.dtype)
            return moved

        self._carry_over(carried, None, grown_gradient, optimizers)
        counts = torch.bincount(kept_keys // self.dim, minlength=self.num_rows) + torch.bincount(grown // self.dim, minlength=self.num_rows)
        columns = torch.empty_like(self.columns)
        columns[is_kept] = self.columns[kept]
        columns[is_grown] = (grown % self.dim).to(columns.dtype)
        self._set_offsets(counts)
        self.columns = columns
        self.looked_up = []
        return k

    def lookup_gradient(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The rows looked up since :attr:`keep_lookup_gradient` was set (ascending, once
        each) and the gradient of the dense table at them, or None without one."""
        looked_up = [(rows, dense.grad) for rows, dense in self.looked_up if dense.grad is not None]
        if not looked_up:
            return None
        rows, first = torch.unique(torch.cat([rows for rows, _ in looked_up]), return_inverse=True)
        # Each lookup's rows summed on their own, then the lookups added: the order in
        # which autograd sums a dense table's gradient, so growth ranks the same numbers.
        summed = torch.zeros(len(rows), self.dim, dtype=looked_up[0][1].dtype, device=rows.device)
        for inverse, (_, grad) in zip(torch.split(first, [len(r) for r, _ in looked_up]), looked_up):
            summed += torch.zeros_like(summed).index_add_(0, inverse, grad)
        return rows, summed

    def dense_lookup_gradient(self) -> torch.Tensor:
        """:meth:`lookup_gradient` as the dense table's gradient: zero in rows not looked up."""
        gradient = torch.zeros(self.num_rows, self.dim, dtype=self.values.dtype, device=self.values.device)
        looked_up = self.lookup_gradient()
        if looked_up is not None:
            gradient[looked_up[0]] = looked_up[1]
        return gradient

    @torch.no_grad()
    def relayout(
        self, mask: torch.Tensor, fresh: torch.Tensor, weight: torch.Tensor, gradient: torch.Tensor, optimizers: Iterable[torch.optim.Optimizer]
    ) -> None:
        """Make ``mask`` the layout after a prune and grow decided on the dense view of the
        table (structured masks, growth by the interval's gradient or at random). Entries at
        the flat positions ``fresh`` (grown, all active in ``mask``) take their values from
        the dense ``weight`` and their gradient from the dense ``gradient``, with fresh
        optimizer state; the other active entries keep value, gradient and state."""
        keys = mask.flatten().nonzero().flatten().to(self.values.device)
        if keys.numel() != self.active:
            raise ValueError(f"a packed table keeps its budget of {self.active} entries, the mask has {keys.numel()}")
        old_keys = self.keys()
        source = torch.searchsorted(old_keys, keys).clamp(max=old_keys.numel() - 1)
        is_fresh = _contains(torch.sort(fresh.to(keys.device)).values, keys)
        kept = (old_keys[source] == keys) & ~is_fresh
        fresh_keys = keys[~kept]

        def carried(tensor: torch.Tensor, fill: Optional[torch.Tensor] = None) -> torch.Tensor:
            moved = torch.zeros_like(tensor)
            moved[kept] = tensor[source[kept]]
            if fill is not None:
                moved[~kept] = fill.flatten()[fresh_keys].to(moved.dtype)
            return moved

        self._carry_over(carried, weight, gradient, optimizers)
        self._set_layout(keys)
        self.looked_up = []

    def _carry_over(
        self,
        carried: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor],
        value_fill: Optional[torch.Tensor],
        gradient_fill: Optional[torch.Tensor],
        optimizers: Iterable[torch.optim.Optimizer],
    ) -> None:
        """Move the values, their gradient and every optimizer's state of them to a new
        layout with ``carried``; grown entries take the fills, and fresh (zero) state."""
        self.values.data = carried(self.values.data, value_fill)
        if self.values.grad is not None:
            self.values.grad = carried(self.values.grad, gradient_fill)
        for optimizer in optimizers:
            state = optimizer.state.get(self.values, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.shape == self.values.shape:
                    state[name] = carried(value, None)

    def _grow(self, kept_keys: torch.Tensor, k: int, generator: Optional[torch.Generator]) -> Tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` flat positions to grow, outside ``kept_keys``, and their lookup gradients."""
        device = kept_keys.device
        chosen, gradient = torch.zeros(0, dtype=torch.int64, device=device), torch.zeros(0, device=device)
        looked_up = self.lookup_gradient()
        if looked_up is not None:
            rows, summed = looked_up
            summed = summed.flatten()
            candidates = (rows.unsqueeze(1) * self.dim + torch.arange(self.dim, device=device)).flatten()
            eligible = ~_contains(kept_keys, candidates) & (summed != 0)
            candidates, summed = candidates[eligible], summed[eligible]
            best = torch.topk(summed.abs(), min(k, summed.numel())).indices
            chosen, gradient = candidates[best], summed[best]
        while chosen.numel() < k:
            draw = torch.unique(torch.randint(self.num_rows * self.dim, (2 * (k - chosen.numel()),), generator=generator)).to(device)
            draw = draw[~_contains(kept_keys, draw) & ~_contains(torch.sort(chosen).values, draw)]
            draw = draw[torch.randperm(draw.numel(), generator=generator).to(device)][: k - chosen.numel()]
            chosen, gradient = torch.cat([chosen, draw]), torch.cat([gradient, torch.zeros(draw.numel(), device=device)])
        return chosen, gradient


def _contains(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Whether each query is one of ``sorted_keys``."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(queries, dtype=torch.bool)
    at = torch.searchsorted(sorted_keys, queries).clamp(max=sorted_keys.numel() - 1)
    return sorted_keys[at] == queries
