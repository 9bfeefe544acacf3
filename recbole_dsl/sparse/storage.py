"""How a sparsified tensor is held between steps.

The manager decides which entries are active; a storage keeps that decision and keeps the
inactive entries of the tensor at zero. :class:`MaskedStorage` is the interface the
manager uses; :class:`DenseMaskedStorage` holds the tensor dense with a boolean mask, and
:class:`PackedStorage` an embedding table as its active values and their positions.
"""

from __future__ import annotations

from typing import List, Optional, Protocol

import torch

from recbole_dsl.sparse.packed import PackedEmbedding


class MaskedStorage(Protocol):
    """A sparsified tensor's active entries, as the manager sees them."""

    mask: torch.Tensor  # boolean, the tensor's shape: True where an entry is active

    def set_mask(self, mask: torch.Tensor) -> None:
        """Make ``mask`` the active entries (the tensor's values are the caller's to zero)."""

    def zero_inactive(self, weight: torch.Tensor) -> None:
        """Set every inactive entry of ``weight`` to zero, in place."""

    def held_bytes(self) -> int:
        """Bytes the storage itself holds beyond the tensor's own."""


class DenseMaskedStorage:
    """The tensor stays a dense parameter and a boolean mask marks its active entries; the
    inactive ones are multiplied by zero. The mask in the weight's dtype is cached until the
    mask changes, since multiplying by a boolean mask would convert it at every step."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self._multiplier: Optional[torch.Tensor] = None

    def set_mask(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self._multiplier = None

    def multiplier(self, dtype: torch.dtype) -> torch.Tensor:
        if self._multiplier is None or self._multiplier.dtype != dtype:
            self._multiplier = self.mask.to(dtype)
        return self._multiplier

    def zero_inactive(self, weight: torch.Tensor) -> None:
        weight.mul_(self.multiplier(weight.dtype))

    def held_bytes(self) -> int:
        held = self.mask.numel() * self.mask.element_size()
        if self._multiplier is not None:
            held += self._multiplier.numel() * self._multiplier.element_size()
        return held


class PackedStorage:
    """The tensor is a :class:`~recbole_dsl.sparse.packed.PackedEmbedding`: only the active
    entries exist, so there is nothing inactive to zero, and the mask is built from the
    layout when asked for."""

    def __init__(self, table: PackedEmbedding) -> None:
        self.table = table

    @property
    def mask(self) -> torch.Tensor:
        return self.table.mask()

    def set_mask(self, mask: torch.Tensor) -> None:
        self.table.set_mask(mask)

    def zero_inactive(self, weight: torch.Tensor) -> None:
        pass

    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.table.row_offsets, self.table.columns))


def zero_inactive_(storages: List[MaskedStorage], weights: List[torch.Tensor]) -> None:
    """Zero the inactive entries of every weight with its storage: the dense masked ones in
    one multi-tensor multiplication (what the tensors of one optimizer step need after it),
    any other storage on its own."""
    masked = [(s, w) for s, w in zip(storages, weights) if isinstance(s, DenseMaskedStorage)]
    for storage, weight in zip(storages, weights):
        if not isinstance(storage, DenseMaskedStorage):
            storage.zero_inactive(weight)
    if masked:
        torch._foreach_mul_([w for _, w in masked], [s.multiplier(w.dtype) for s, w in masked])
