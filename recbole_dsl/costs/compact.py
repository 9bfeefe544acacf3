"""A compact file format for sparse models: each sparsified tensor stored in the cheapest
of three encodings, the others as they are, in one safetensors file.

- ``dense``: the tensor itself;
- ``bitmap``: the active values in row-major order plus one bit per entry;
- ``indices``: the active values plus their flat positions as the narrowest unsigned
  integer type that holds ``numel - 1``.

The bitmap encoding takes ``numel / 8 + 4 * nnz`` bytes for fp32, so no sparsified tensor
ever takes more than ``(density + 1/32)`` of its dense size. Safetensors holds no code:
loading a file runs nothing from it.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Mapping, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

FORMAT = "recbole-dsl-compact"
VERSION = "1"
ENCODINGS = ("dense", "bitmap", "indices")
_INDEX_TYPES = ((2**8, torch.uint8), (2**16, torch.uint16), (2**32, torch.uint32), (2**63, torch.int64))


class CompactFileError(ValueError):
    """A compact file that is corrupt, truncated or not written by :func:`save_compact`."""


def _index_dtype(numel: int) -> torch.dtype:
    return next(dtype for bound, dtype in _INDEX_TYPES if numel <= bound)


def encoded_sizes(numel: int, nnz: int, element_size: int) -> Dict[str, int]:
    """Payload bytes of each encoding of a tensor with ``nnz`` active entries."""
    return {
        "dense": numel * element_size,
        "bitmap": (numel + 7) // 8 + nnz * element_size,
        "indices": nnz * (_index_dtype(numel).itemsize + element_size),
    }


def encode(state_dict: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> bytes:
    """The compact file's bytes for ``state_dict`` whose tensors named in ``masks`` are
    zero outside their masks."""
    tensors: Dict[str, torch.Tensor] = {}
    layout: Dict[str, Dict[str, object]] = {}
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu().contiguous()
        entry = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", "")}
        mask = masks.get(name)
        encoding = "dense"
        if mask is not None:
            mask = mask.detach().cpu().bool().reshape(-1)
            sizes = encoded_sizes(tensor.numel(), int(mask.sum()), tensor.element_size())
            encoding = min(sizes, key=sizes.get)
        if encoding == "dense":
            tensors[name] = tensor.clone()  # safetensors refuses tensors that share memory (tied weights)
        else:
            flat = tensor.reshape(-1)
            tensors[f"{name}::values"] = flat[mask]
            if encoding == "bitmap":
                tensors[f"{name}::bitmap"] = torch.from_numpy(np.packbits(mask.numpy()))
            else:
                tensors[f"{name}::indices"] = mask.nonzero().reshape(-1).to(_index_dtype(tensor.numel()))
        entry["encoding"] = encoding
        layout[name] = entry
    return save_bytes(tensors, metadata={"format": FORMAT, "version": VERSION, "layout": json.dumps(layout)})


def save_compact(
    path: str, state_dict: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]
) -> int:
    """Write the compact file atomically; returns its size in bytes."""
    data = encode(state_dict, masks)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def load_compact(path: str) -> Dict[str, torch.Tensor]:
    """The dense state dict stored in a compact file.

    Raises :class:`CompactFileError` for a missing, corrupt or truncated file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CompactFileError(f"cannot read compact file {path}: {e.strerror}") from None
    return decode(data, path)


def decode(data: bytes, path: str = "<bytes>") -> Dict[str, torch.Tensor]:
    def corrupt(reason: str) -> CompactFileError:
        return CompactFileError(f"{path} is not a valid recbole-dsl compact file ({reason})")

    try:
        tensors = load_bytes(data)
        metadata = _metadata(data)
    except (SafetensorError, ValueError, KeyError, OverflowError) as e:
        raise corrupt(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
        raise corrupt(f"format {metadata.get('format')!r} version {metadata.get('version')!r}")
    try:
        layout = json.loads(metadata["layout"])
        return {name: _decode_tensor(name, entry, tensors) for name, entry in layout.items()}
    except (KeyError, TypeError, ValueError, RuntimeError, json.JSONDecodeError) as e:
        raise corrupt(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _metadata(data: bytes) -> Dict[str, str]:
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    return header.get("__metadata__", {})


def _decode_tensor(name: str, entry: Dict[str, object], tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
    shape: Tuple[int, ...] = tuple(int(s) for s in entry["shape"])
    dtype = getattr(torch, str(entry["dtype"]))
    encoding = entry["encoding"]
    if encoding == "dense":
        tensor = tensors[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)} {tensor.dtype}, layout says {shape} {dtype}")
        return tensor
    if encoding not in ENCODINGS:
        raise ValueError(f"{name} has unknown encoding {encoding!r}")
    numel = int(np.prod(shape))
    values = tensors[f"{name}::values"]
    if encoding == "bitmap":
        bits = tensors[f"{name}::bitmap"]
        if bits.numel() != (numel + 7) // 8:
            raise ValueError(f"{name} bitmap holds {bits.numel() * 8} bits for {numel} entries")
        mask = torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))
        positions = mask.nonzero().reshape(-1)
    else:
        positions = tensors[f"{name}::indices"].to(torch.int64)
        if positions.numel() and (positions.min() < 0 or positions.max() >= numel or (positions.diff() <= 0).any()):
            raise ValueError(f"{name} indices are not increasing positions below {numel}")
    if values.numel() != positions.numel() or values.dtype != dtype:
        raise ValueError(f"{name} has {values.numel()} {values.dtype} values for {positions.numel()} positions")
    flat = torch.zeros(numel, dtype=dtype)
    flat[positions] = values
    return flat.view(shape)
