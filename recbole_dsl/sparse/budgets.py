"""Which tensors are sparsified and how many non-zeros each one keeps."""

from __future__ import annotations

import math
import re
from typing import Dict, List, Sequence, Union

import torch
from torch import nn

DISTRIBUTIONS = ("uniform", "erk")


def select_parameters(module: nn.Module, selection: Union[str, Sequence[str]]) -> List[str]:
    """Names of the trainable tensors of ``module`` to sparsify.

    ``"all"``: every trainable weight with two or more dimensions (embedding tables,
    linear, recurrent and convolution weights; biases and norms stay dense).
    ``"embeddings"``: the weights of ``nn.Embedding`` modules only.
    A list of regular expressions: every trainable tensor of more than one element whose
    name matches one of them (``re.search``).
    """
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    if selection == "all":
        return [name for name, p in trainable.items() if p.dim() >= 2]
    if selection == "embeddings":
        embedding_weights = {
            f"{prefix}.weight" if prefix else "weight"
            for prefix, sub in module.named_modules()
            if isinstance(sub, nn.Embedding)
        }
        return [name for name in trainable if name in embedding_weights]
    if isinstance(selection, str):
        raise ValueError(f"unknown parameter selection {selection!r}: use all, embeddings or a list of patterns")
    patterns = [re.compile(p) for p in selection]
    return [
        name for name, p in trainable.items() if p.numel() > 1 and any(pat.search(name) for pat in patterns)
    ]


def round_budget(density: float, numel: int) -> int:
    """Number of non-zeros of a tensor of ``numel`` entries at ``density`` (half rounds up)."""
    return min(numel, int(math.floor(density * numel + 0.5)))


def layer_densities(shapes: Dict[str, torch.Size], density: float, distribution: str) -> Dict[str, float]:
    """Per-tensor densities whose weighted mean is ``density``.

    ``uniform`` gives every tensor ``density``. ``erk`` (Erdos-Renyi-Kernel, from RigL)
    scales each tensor's density with ``sum(shape) / prod(shape)``, so small tensors stay
    denser; tensors that would exceed density 1 are made dense and the rest rescaled.
    """
    if distribution == "uniform" or density >= 1.0:
        return {name: density for name in shapes}
    if distribution != "erk":
        raise ValueError(f"unknown sparsity distribution {distribution!r}: use one of {DISTRIBUTIONS}")
    numels = {name: math.prod(shape) for name, shape in shapes.items()}
    raw = {name: sum(shape) / numels[name] for name, shape in shapes.items()}
    dense: set = set()
    while True:
        budget = density * sum(numels.values()) - sum(numels[n] for n in dense)
        scale = budget / sum(raw[n] * numels[n] for n in shapes if n not in dense)
        over = [n for n in shapes if n not in dense and scale * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else scale * raw[n] for n in shapes}
        dense.add(max(over, key=lambda n: raw[n]))
