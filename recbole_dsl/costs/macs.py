"""Multiply-accumulate counts of what a model really executes, dense and sparsity-aware.

:class:`MacCounter` is a dispatch mode: every ATen operation a model runs passes through
it, so any model is covered without a formula of its own. Products are counted twice:

- **dense**: what dense kernels do, one MAC per scalar multiplication of a matrix,
  batched, sparse-dense or element-wise product;
- **sparse**: the same, leaving out every multiplication in which one factor is a
  *structural zero*, an entry of a sparsified weight outside its mask, or a copy of one
  (an embedding row gathered for a batch, a transposed or concatenated weight, ...).

Structural zeros are followed through operations that move or scale data (views,
transposes, gathers, concatenation, element-wise products, dropout); any other
operation (an addition, a normalisation, a matrix product) yields dense values, so a
graph model's activations are dense after its first propagation step. A followed mask is
held as ones and zeros in its tensor's own dtype: the operation that moves the data moves
it, and its counts are float sums, which are exact and many times quicker than boolean
reductions on CPU.

Backward MACs are derived from the forward products: for a product ``A·B`` the gradient
of each factor that requires one costs the same multiplications as the forward product
(every forward multiplication ``a·b`` reappears once in ``∂A`` and once in ``∂B``, and
gradients of sparsified weights are needed only at active entries). At a
gradient-growth update the gradients of sparsified weights are needed everywhere, which
:attr:`MacCount.growth_backward` counts. Under ``torch.no_grad()`` (an evaluation pass) no
gradient is taken and no backward is counted.

Counting the full sort of a model that scores every (user, item) pair through its own
forward (NeuMF) repeats the test pass's work, and its masks would be one row per pair. So
the mask of an embedding lookup is kept as the table's mask and the looked-up indices,
and so are products and concatenations of such masks, until an operation other than a
product needs it whole; and with ``values=False`` the counter runs the model on shapes
and masks only, leaving the outputs of operations uninitialised (the counts depend on
shapes and masks alone, except in a model whose shapes follow its values, which its
caller must rule out).
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import conv_flop_count, flop_registry, sdpa_flop_count

aten = torch.ops.aten


@dataclass
class MacCount:
    """MACs of the operations run under one :class:`MacCounter`."""

    forward: int = 0
    forward_dense: int = 0
    backward: int = 0
    backward_dense: int = 0
    growth_backward: int = 0

    def __add__(self, other: "MacCount") -> "MacCount":
        return MacCount(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))

    def __sub__(self, other: "MacCount") -> "MacCount":
        return MacCount(*(getattr(self, f) - getattr(other, f) for f in self.__dataclass_fields__))

    def scaled(self, factor: float) -> "MacCount":
        return MacCount(*(round(getattr(self, f) * factor) for f in self.__dataclass_fields__))

    @property
    def training_step(self) -> int:
        """Forward and backward of one sparse training step between mask updates."""
        return self.forward + self.backward

    @property
    def training_step_dense(self) -> int:
        return self.forward_dense + self.backward_dense


# Operations whose output keeps the structural zeros of their input: the output's mask is
# the operation applied to the input's mask (other floating operands replaced by ones).
_MASK_PRESERVING = {
    aten.t.default, aten.transpose.int, aten.permute.default, aten.view.default,
    aten._unsafe_view.default, aten.reshape.default, aten.expand.default, aten.slice.Tensor,
    aten.select.int, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
    aten.squeeze.default, aten.clone.default, aten._to_copy.default, aten.detach.default,
    aten.alias.default, aten.lift_fresh.default, aten.embedding.default, aten.index_select.default,
    aten.index.Tensor, aten.gather.default, aten.cat.default, aten.stack.default,
    aten.repeat.default, aten.split.Tensor, aten.split_with_sizes.default, aten.unsafe_split.Tensor,
    aten.unbind.int, aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar,
    aten.neg.default, aten.relu.default, aten.tanh.default,
}
# Of those, the ones that may turn a mask of ones and zeros into other values (a negated,
# squashed or scaled mask, or one multiplied by an integer tensor): their output masks are
# made ones and zeros again.
_RESCALING = {aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.neg.default, aten.tanh.default}
# A float32 sum of ones and zeros is exact up to 2**24 terms.
_EXACT_TERMS = 2**24


class MacCounter(TorchDispatchMode):
    """Count the MACs of everything run inside ``with MacCounter(masks) as counter:``.

    ``masks`` maps a sparsified parameter to its mask (``True`` or 1 = active). Weights
    without a mask are dense. ``counter.count`` holds the totals; ``counter.by_op`` the
    dense forward MACs per ATen operation. With ``values=False`` operations that make new
    floating tensors from strided ones return them uninitialised.
    """

    def __init__(self, masks: Mapping[torch.Tensor, torch.Tensor], values: bool = True) -> None:
        super().__init__()
        self._param_masks = {id(p): (p, m.to(p.dtype)) for p, m in masks.items() if not bool(m.all())}
        self._masks: Dict[int, Any] = {}
        self.values = values
        self.count = MacCount()
        self.by_op: Dict[str, int] = {}

    def __enter__(self) -> "MacCounter":
        self._masks = {key: (weakref.ref(p), mask) for key, (p, mask) in self._param_masks.items()}
        return super().__enter__()

    def __exit__(self, *args: Any) -> None:
        self._masks = {}
        return super().__exit__(*args)

    # ------------------------------------------------------------------ mask tracking
    def mask_of(self, tensor: Any) -> Optional[torch.Tensor]:
        """The structural mask of ``tensor`` (ones at active entries, zeros elsewhere, in its
        dtype), or None when it has no structural zeros."""
        mask = self._held_mask(tensor)
        if mask is None or torch.is_tensor(mask):
            return mask
        reference, _ = self._masks[id(tensor)]
        mask = mask.materialize()
        self._masks[id(tensor)] = (reference, mask)
        return mask

    def _held_mask(self, tensor: Any) -> Any:
        """The mask of ``tensor`` as held: a tensor, a lazy mask, or None."""
        entry = self._masks.get(id(tensor)) if torch.is_tensor(tensor) else None
        return entry[1] if entry is not None and entry[0]() is tensor else None

    def _track(self, tensor: torch.Tensor, mask: Any) -> None:
        # A weak reference: the mask is dropped with its tensor, so long evaluations
        # don't keep every batch's masks alive. A lazy mask is kept without looking for
        # its zeros: a mask of ones counts as no mask.
        if tuple(mask.shape) != tuple(tensor.shape) or tensor.numel() == 0:
            return
        if torch.is_tensor(mask) and not bool(mask.amin() == 0):
            return
        key = id(tensor)
        self._masks[key] = (weakref.ref(tensor, lambda _, key=key: self._masks.pop(key, None)), mask)

    def _lazy_mask(self, func, args, out) -> Any:
        """The mask of ``out`` kept lazily, or None where it must be computed: an embedding
        lookup in a sparsified table, the element-wise product of two lookups of one shape,
        and a concatenation of lookups, their products and other tensors along the last
        dimension."""
        if func is aten.embedding.default:
            table = self._held_mask(args[0])
            return _GatheredRows(table, args[1]) if torch.is_tensor(table) and table.dim() == 2 else None
        if func is aten.mul.Tensor:
            a, b = (self._held_mask(x) for x in args[:2])
            same = isinstance(a, _GatheredRows) and isinstance(b, _GatheredRows) and a.shape == b.shape == tuple(out.shape)
            return a.times(b) if same else None
        if func is aten.cat.default and torch.is_tensor(out):
            dim = args[1] if len(args) > 1 else 0
            parts = [x for x in args[0] if x.numel() > 0]
            if dim % out.dim() != out.dim() - 1 or any(x.shape[:-1] != out.shape[:-1] for x in parts):
                return None
            masks = [self._held_mask(x) for x in parts]
            if any(isinstance(m, _LAZY) for m in masks):
                return _Concatenated([m if m is not None else x.shape[-1] for x, m in zip(parts, masks)], tuple(out.shape))
        return None

    def _propagate(self, func, args, kwargs, out) -> None:
        if func is aten.native_dropout.default:
            mask = self._held_mask(args[0])
            if mask is not None:
                self._track(out[0], mask)
            return
        if func not in _MASK_PRESERVING:
            if func._schema.is_mutable and args and self._held_mask(args[0]) is not None:
                del self._masks[id(args[0])]  # written in place: its zeros may be gone
            return
        lazy = self._lazy_mask(func, args, out)
        if lazy is not None:
            self._track(out, lazy)
            return

        def substitute(x: Any) -> Any:
            if not torch.is_tensor(x) or not x.is_floating_point() or x.layout != torch.strided:
                return x
            mask = self.mask_of(x)
            return mask.to(x.dtype) if mask is not None else torch.ones_like(x)

        with torch.no_grad():
            mask_out = func(*tree_map(substitute, args), **tree_map(substitute, kwargs))
        outs = out if isinstance(out, (list, tuple)) else [out]
        masks = mask_out if isinstance(mask_out, (list, tuple)) else [mask_out]
        zero_one = _keeps_zero_one(func, args)
        for tensor, mask in zip(outs, masks):
            if torch.is_tensor(tensor) and tensor.is_floating_point():
                self._track(tensor, mask if zero_one else (mask != 0).to(tensor.dtype))

    # ------------------------------------------------------------------ counting
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = None if self.values else _uninitialized_output(func, args, kwargs)
        if out is None:
            out = func(*args, **kwargs)
        if torch._C._current_autograd_node() is not None:
            return out  # backward work is derived from the forward products
        rule = _RULES.get(func) or (_registry_rule if func.overloadpacket in flop_registry else None)
        if rule is not None:
            self._count(rule, func, args, kwargs, out)
        if any(self._held_mask(a) is not None for a in tree_flatten((args, kwargs))[0]):
            self._propagate(func, args, kwargs, out)
        return out

    def _count(self, rule, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        for index, (dense, sparse, operands) in enumerate(rule(self, func, args, kwargs, out)):
            needs_grad = [x for x in operands if torch.is_tensor(x) and x.requires_grad] if torch.is_grad_enabled() else []
            self.by_op[name] = self.by_op.get(name, 0) + dense
            self.count.forward_dense += dense
            self.count.forward += sparse
            self.count.backward_dense += dense * len(needs_grad)
            self.count.backward += sparse * len(needs_grad)
            for operand in needs_grad:
                if self._held_mask(operand) is None:
                    self.count.growth_backward += sparse
                else:
                    self.count.growth_backward += self._without_mask(rule, index, func, args, kwargs, out, operand)

    def _without_mask(self, rule, index: int, func, args, kwargs, out, operand: torch.Tensor) -> int:
        """Sparse count of product ``index`` if ``operand``'s structural zeros were not
        exploited: a gradient-growth update needs the whole gradient of a sparse weight."""
        saved = self._masks.pop(id(operand))
        try:
            return list(rule(self, func, args, kwargs, out))[index][1]
        finally:
            self._masks[id(operand)] = saved


class _GatheredRows:
    """The mask of ``table[index]``, rows of a sparsified table looked up for a batch, held
    as the table's mask and the indices: a full sort's pairs would need a row for each."""

    def __init__(self, table: torch.Tensor, index: torch.Tensor) -> None:
        self.table, self.index, self.device = table, index, table.device
        self.shape = (*index.shape, table.shape[1])
        self._products: Dict[int, "_RowProduct"] = {}

    def materialize(self) -> torch.Tensor:
        return self.table[self.index]

    def times(self, other: "_GatheredRows") -> "_RowProduct":
        """The mask of this lookup times ``other``, one object for the product's count and
        for the operations that read its output, so its columns are summed once."""
        return self._products.setdefault(id(other), _RowProduct(self, other))

    @functools.cached_property
    def column_active(self) -> torch.Tensor:
        """Active entries of each column, over all the looked-up rows (int64)."""
        looked_up = torch.bincount(self.index.reshape(-1), minlength=self.table.shape[0])
        return (looked_up.to(torch.float64) @ self.table.to(torch.float64)).round().to(torch.int64)


class _RowProduct:
    """The mask of the element-wise product of two lookups of one shape (an MF score's
    factors): active where both rows are."""

    def __init__(self, a: _GatheredRows, b: _GatheredRows) -> None:
        self.a, self.b, self.shape, self.device = a, b, a.shape, a.device

    def materialize(self) -> torch.Tensor:
        return self.a.materialize() * self.b.materialize()

    @functools.cached_property
    def column_active(self) -> torch.Tensor:
        """Active entries of each column: the sum over pairs ``p`` of ``a[i_p] * b[j_p]``,
        as the pairs' counts between the distinct rows of each side times the two tables'
        rows, which holds no row per pair. Where the distinct rows are too many for that
        (random pairs of a training batch), the rows of the pairs are multiplied."""
        i, j = self.a.index.reshape(-1), self.b.index.reshape(-1)
        rows_i, position_i = _distinct(i, self.a.table.shape[0])
        rows_j, position_j = _distinct(j, self.b.table.shape[0])
        if len(rows_i) * len(rows_j) > 2 * len(i):
            return _sum_exactly(self.a.table[i] * self.b.table[j], 0)
        pairs = torch.zeros(len(rows_i), len(rows_j), dtype=torch.float64, device=i.device)
        pairs.index_put_((position_i, position_j), torch.ones(len(i), dtype=torch.float64, device=i.device), accumulate=True)
        table_i, table_j = self.a.table[rows_i].to(torch.float64), self.b.table[rows_j].to(torch.float64)
        return ((pairs @ table_j) * table_i).sum(dim=0).round().to(torch.int64)


class _Concatenated:
    """The mask of a concatenation along the last dimension: each part a lazy mask, a
    mask, or the width of a part without structural zeros."""

    def __init__(self, parts: Sequence[Any], shape: Sequence[int]) -> None:
        self.parts, self.shape = list(parts), tuple(shape)
        self.device = next(p for p in self.parts if not isinstance(p, int)).device

    def materialize(self) -> torch.Tensor:
        masks = [None if isinstance(p, int) else p if torch.is_tensor(p) else p.materialize() for p in self.parts]
        like = next(m for m in masks if m is not None)
        return torch.cat([
            m if m is not None else like.new_ones(*self.shape[:-1], p) for m, p in zip(masks, self.parts)
        ], dim=-1)

    @functools.cached_property
    def column_active(self) -> torch.Tensor:
        rows = math.prod(self.shape[:-1])
        return torch.cat([
            torch.full((p,), rows, dtype=torch.int64, device=self.device) if isinstance(p, int)
            else _sum_exactly(p.reshape(-1, p.shape[-1]), 0) if torch.is_tensor(p) else p.column_active
            for p in self.parts
        ])


_LAZY = (_GatheredRows, _RowProduct, _Concatenated)


def _distinct(index: torch.Tensor, rows: int) -> tuple:
    """The distinct rows ``index`` holds, and the position of each of its entries among
    them: a bincount rather than a sort."""
    present = torch.bincount(index, minlength=rows) > 0
    return present.nonzero().squeeze(1), (present.cumsum(0) - 1)[index]


def _on_meta(x: Any) -> Any:
    return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta") if torch.is_tensor(x) else x


def _uninitialized_output(func, args, kwargs) -> Any:
    """The output of ``func``, with its shapes, strides and dtypes read from the meta
    device, left uninitialised; None where the operation must run: a view or an in-place
    operation, an input that is not a strided tensor, an output that is not floating (an
    index), a shape the meta device cannot tell."""
    schema = func._schema
    if schema.is_mutable or any(r.alias_info is not None for r in schema.returns):
        return None
    tensors = [x for x in tree_flatten((args, kwargs))[0] if torch.is_tensor(x)]
    if not tensors or any(t.layout != torch.strided for t in tensors):
        return None
    try:
        meta = func(*tree_map(_on_meta, args), **tree_map(_on_meta, kwargs))
    except (NotImplementedError, RuntimeError):
        return None
    outs = meta if isinstance(meta, (tuple, list)) else [meta]
    if not all(torch.is_tensor(o) and o.is_floating_point() for o in outs):
        return None
    made = [torch.empty_strided(o.shape, o.stride(), dtype=o.dtype, device=tensors[0].device) for o in outs]
    return type(meta)(made) if isinstance(meta, (tuple, list)) else made[0]


def _keeps_zero_one(func, args) -> bool:
    """Whether ``func`` applied to masks and ones gives ones and zeros: every operation
    but those of ``_RESCALING``, and of those a product whose factors are all floating
    (so all substituted)."""
    if func not in _RESCALING:
        return True
    return func is aten.mul.Tensor and all(torch.is_tensor(a) and a.is_floating_point() and a.layout == torch.strided for a in args)


def _sum_exactly(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Active entries of a mask along ``dim`` as int64: float32 sums, over blocks short
    enough to be exact."""
    return sum(block.sum(dim=dim, dtype=torch.float32).to(torch.int64) for block in mask.split(_EXACT_TERMS, dim=dim))


def _active(mask: torch.Tensor) -> int:
    """Active entries of a mask in all."""
    rows = mask.reshape(-1, mask.shape[-1]) if mask.dim() > 1 else mask.reshape(-1, 1)
    return int(_sum_exactly(rows, 0).sum())


def _active_per_k(mask: Optional[torch.Tensor], shape: Sequence[int], reduce_dim: int) -> Any:
    """Active entries along the non-contracted dimension, per contracted index."""
    if mask is None:
        return shape[reduce_dim]
    return _sum_exactly(mask, reduce_dim)


def _matmul_rule(counter: MacCounter, func, args, kwargs, out):
    """mm / addmm / bmm / baddbmm: sum over the contracted index k of the active entries
    of A's column k times the active entries of B's row k."""
    a, b = (args[1], args[2]) if func in (aten.addmm.default, aten.baddbmm.default) else (args[0], args[1])
    if a.layout == torch.sparse_coo:
        yield from _sparse_dense_rule(counter, a, b)
        return
    dense = math.prod(a.shape) * b.shape[-1]
    ma = counter._held_mask(a)
    if isinstance(ma, _LAZY) and a.dim() == 2:
        per_k_a = ma.column_active  # a lookup's rows, products and concatenations of them
    else:
        ma = counter.mask_of(a)
        per_k_a = _active_per_k(ma, a.shape, a.dim() - 2)
    mb = counter.mask_of(b)
    if ma is None and mb is None:
        sparse = dense
    else:
        per_k = per_k_a * _active_per_k(mb, b.shape, b.dim() - 1)
        sparse = int(per_k.sum()) if torch.is_tensor(per_k) else dense
    yield dense, sparse, (a, b)


def _sparse_addmm_rule(counter: MacCounter, func, args, kwargs, out):
    yield from _sparse_dense_rule(counter, args[1], args[2])


def _sparse_dense_rule(counter: MacCounter, s: torch.Tensor, d: torch.Tensor):
    """Sparse (COO) matrix S times dense D: one MAC per stored entry of S and column of D;
    with D structurally sparse, only D's active entries of the row S's entry selects. The
    kernel multiplies the entries as stored, duplicates of an uncoalesced S included, so
    they are counted as stored (coalescing a graph's adjacency at every propagation step
    would cost more than the product)."""
    columns = s._indices()[1]
    dense = columns.numel() * d.shape[1]
    mask = counter.mask_of(d)
    sparse = dense if mask is None else int(_sum_exactly(mask, 1)[columns].sum())
    yield dense, sparse, (s, d)


def _vector_rule(counter: MacCounter, func, args, kwargs, out):
    """mv (matrix times vector) and dot (vector times vector)."""
    a, b = args[0], args[1]
    dense = a.numel()
    ma, mb = counter.mask_of(a), counter.mask_of(b)
    sparse = dense if ma is None and mb is None else _active(_both_active(a, ma, b, mb))
    yield dense, sparse, (a, b)


def _both_active(a: torch.Tensor, ma, b: torch.Tensor, mb) -> torch.Tensor:
    """Where both (broadcast) factors are active: ones there, zeros elsewhere."""
    if ma is None or mb is None:
        return (mb if ma is None else ma).expand(torch.broadcast_shapes(a.shape, b.shape))
    return ma * mb


def _elementwise_rule(counter: MacCounter, func, args, kwargs, out):
    """Element-wise product of two tensors: one MAC per output entry whose factors are
    both active. Scaling by a number is not a product of tensors and is not counted."""
    a, b = args[0], args[1]
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.numel() <= 1 or b.numel() <= 1:
        return
    if not (a.is_floating_point() and b.is_floating_point()):
        return
    dense = out.numel()
    ma, mb = counter._held_mask(a), counter._held_mask(b)
    if isinstance(ma, _GatheredRows) and isinstance(mb, _GatheredRows) and ma.shape == mb.shape == tuple(out.shape):
        yield dense, int(ma.times(mb).column_active.sum()), (a, b)
        return
    ma, mb = counter.mask_of(a), counter.mask_of(b)
    sparse = dense if ma is None and mb is None else _active(_both_active(a, ma, b, mb))
    yield dense, sparse, (a, b)


def _density(mask: Optional[torch.Tensor]) -> float:
    return 1.0 if mask is None else float(mask.float().mean())


def _convolution_rule(counter: MacCounter, func, args, kwargs, out):
    """Convolutions: torch's count of the dense products, scaled by the densities of the
    input and the weight (exact for a sparse weight up to padding at the borders)."""
    x, w, transposed = args[0], args[1], args[6]
    dense = conv_flop_count(x.shape, w.shape, out.shape, transposed=transposed) // 2
    sparse = round(dense * _density(counter.mask_of(x)) * _density(counter.mask_of(w)))
    yield dense, sparse, (x, w)


def _attention_rule(counter: MacCounter, func, args, kwargs, out):
    """Fused scaled dot-product attention on CPU: torch's count of the products."""
    q, k, v = args[0], args[1], args[2]
    dense = sdpa_flop_count(q.shape, k.shape, v.shape) // 2
    yield dense, dense, (q, k, v)


def _rnn_layer_rule(counter: MacCounter, func, args, kwargs, out):
    """Fused recurrent layer (LSTM on CPU): every time step multiplies the input and the
    hidden state by the input-hidden and hidden-hidden weights."""
    x, w_ih, w_hh = args[0], args[1], args[2]
    steps = math.prod(x.shape[:-1])
    for w in (w_ih, w_hh):
        mask = counter.mask_of(w)
        nnz = w.numel() if mask is None else _active(mask)
        yield steps * w.numel(), steps * nnz, (w,)


def _registry_rule(counter: MacCounter, func, args, kwargs, out):
    """Any other product torch's FLOP counter knows: its count, halved to MACs."""
    dense = int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=out)) // 2
    yield dense, dense, tuple(a for a in args if torch.is_tensor(a))


_RULES = {
    aten.mm.default: _matmul_rule,
    aten.addmm.default: _matmul_rule,
    aten.bmm.default: _matmul_rule,
    aten.baddbmm.default: _matmul_rule,
    aten._sparse_addmm.default: _sparse_addmm_rule,
    aten.mv.default: _vector_rule,
    aten.dot.default: _vector_rule,
    aten.mul.Tensor: _elementwise_rule,
    aten.mul_.Tensor: _elementwise_rule,
    aten.convolution.default: _convolution_rule,
    aten._scaled_dot_product_flash_attention_for_cpu.default: _attention_rule,
    aten.mkldnn_rnn_layer.default: _rnn_layer_rule,
}
