"""Prune and grow as pure functions over (scores, mask, k), after RigL's reference code.

:func:`prune` picks the ``k`` active entries to drop by magnitude; :func:`grow` picks the
``k`` inactive entries to add by the scores of a growth rule (:data:`GROWTH_RULES`:
DSL's gradient magnitude, or SET's random draw).

Two mask structures are supported:

* ``unstructured``: any entry may be active. Prune the ``k`` active entries of smallest
  score, grow the ``k`` inactive entries of largest score.
* ``prefix``: every row of a 2-D tensor is active on a prefix ``[0, length)`` of its
  columns, so that an embedding row is a vector of variable length and two rows always
  share their shorter length in a dot product (a mixed-dimension embedding). Pruning
  shortens rows and growth lengthens them: an entry may only be pruned together with
  every active entry after it, and grown together with every inactive entry before it.
  Scores are made monotone along each row (suffix maximum for pruning, prefix minimum
  for growth), and ties are broken towards the row's end (pruning) or start (growth), so
  the ``k`` entries chosen always keep every row a prefix.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

STRUCTURES = ("unstructured", "prefix")
# How a prefix row's next columns are scored for growth: by their own gradient (entry), or
# by the whole row's gradient norm (row, see :func:`row_growth_scores`).
PREFIX_GROWTHS = ("entry", "row")
# A growth rule scores every entry of a tensor (the inactive ones with the highest scores
# are grown) from the gradient it is given (None for rules that need none) and a generator.
GrowthRule = Callable[[torch.Size, Optional[torch.Tensor], torch.Generator], torch.Tensor]


def _check_structure(structure: str) -> None:
    if structure not in STRUCTURES:
        raise ValueError(f"unknown mask structure {structure!r}: use one of {STRUCTURES}")


def prefix_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Active entries per row of a prefix-structured 2-D mask."""
    return mask.sum(dim=1)


def prefix_mask(lengths: torch.Tensor, columns: int) -> torch.Tensor:
    """The 2-D mask whose row ``r`` is active on ``[0, lengths[r])``."""
    return torch.arange(columns, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def uniform_prefix_mask(shape: torch.Size, budget: int, generator: torch.Generator) -> torch.Tensor:
    """A prefix mask of exactly ``budget`` entries whose row lengths differ by at most one
    (the rows that get the remainder are drawn at random): a dense model of the
    equivalent size, laid out in the full table."""
    rows, columns = shape
    base, extra = divmod(budget, rows)
    lengths = torch.full((rows,), base, dtype=torch.long)
    lengths[torch.randperm(rows, generator=generator)[:extra]] += 1
    return prefix_mask(lengths, columns)


def prune_scores(magnitude: torch.Tensor, mask: torch.Tensor, structure: str = "unstructured") -> torch.Tensor:
    """Scores of the active entries (the lowest are pruned); inactive entries score +inf."""
    _check_structure(structure)
    if structure == "prefix":
        # An entry leaves only with every active entry after it: it scores the largest
        # magnitude it would take along (the suffix maximum over the active part).
        active = torch.where(mask, magnitude, 0.0)
        magnitude = torch.flip(torch.cummax(torch.flip(active, [1]), dim=1).values, [1])
    return torch.where(mask, magnitude, math.inf)


def grow_scores(gradient: torch.Tensor, mask: torch.Tensor, structure: str = "unstructured") -> torch.Tensor:
    """Scores of the inactive entries (the highest are grown); active entries score -inf."""
    _check_structure(structure)
    if structure == "prefix":
        # An entry joins only with every inactive entry before it: it scores the smallest
        # gradient it would bring along (the prefix minimum over the inactive part).
        gradient = torch.cummin(torch.where(mask, math.inf, gradient), dim=1).values
    return torch.where(mask, -math.inf, gradient)


def row_growth_scores(gradient: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Growth scores that share length out between the rows of a prefix mask by each row's
    gradient norm: the ``m``-th column after a row's end scores ``norm / m``, so growth
    lengthens rows in proportion to their norms. A column that no row of the other factor
    table reaches has a zero gradient in every row, so that entry scores cannot lengthen a
    row past the longest rows of the other table; these can."""
    lengths = mask.sum(dim=1, keepdim=True)
    after_end = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0) - lengths + 1
    norms = gradient.norm(dim=1, keepdim=True)
    return torch.where(after_end > 0, norms / after_end.clamp(min=1), 0.0)


def _tie_rank(shape: torch.Size, towards_end: bool, generator: Optional[torch.Generator]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Where each flat position of a prefix-structured 2-D tensor comes in the order that
    breaks ties: by column (last first when ``towards_end``), rows in a random order
    within a column."""
    rows, columns = shape
    row_rank = torch.empty(rows, dtype=torch.long)
    row_rank[torch.randperm(rows, generator=generator)] = torch.arange(rows)

    def rank(positions: torch.Tensor) -> torch.Tensor:
        column = positions % columns
        column_rank = columns - 1 - column if towards_end else column
        return column_rank * rows + row_rank.to(positions.device)[positions // columns]

    return rank


def select_lowest(
    scores: torch.Tensor, k: int, structure: str = "unstructured", generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Flat indices of the ``k`` lowest scores; ties go to the end of a prefix row first."""
    return _select(scores, k, structure, generator, lowest=True)


def select_highest(
    scores: torch.Tensor, k: int, structure: str = "unstructured", generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Flat indices of the ``k`` highest scores; ties go to the start of a prefix row first."""
    return _select(scores, k, structure, generator, lowest=False)


def _select(
    scores: torch.Tensor,
    k: int,
    structure: str,
    generator: Optional[torch.Generator],
    lowest: bool,
    first_column: int = 0,
    columns: Optional[int] = None,
) -> torch.Tensor:
    """``scores`` may be the columns from ``first_column`` on of a prefix-structured tensor
    of ``columns`` columns; the indices returned are the whole tensor's."""
    _check_structure(structure)
    if structure == "unstructured":
        return torch.topk(scores.flatten(), k, largest=not lowest).indices
    # The first k of a stable sort of the scores in tie order, without sorting them all:
    # the entries at least as good as the k-th score, sorted by (score, tie order).
    rows, width = scores.shape
    columns = width if columns is None else columns
    flat = scores.flatten()
    rank = _tie_rank(torch.Size((rows, columns)), towards_end=lowest, generator=generator)
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    threshold = torch.topk(flat, k, largest=not lowest).values[-1]
    candidates = (flat <= threshold if lowest else flat >= threshold).nonzero().flatten()
    positions = candidates if width == columns else candidates // width * columns + candidates % width + first_column
    return positions[_order_by_score_then_rank(flat[candidates], rank(positions), lowest)[:k]]


def _order_by_score_then_rank(values: torch.Tensor, ranks: torch.Tensor, lowest: bool) -> torch.Tensor:
    """The permutation that sorts ``values`` best first (lowest or highest), equal values by
    ``ranks``: one sort of a combined integer key where the ranks fit in 32 bits."""
    if values.dtype != torch.float32 or ranks.numel() == 0 or int(ranks.max()) >= 2**32:
        by_rank = torch.sort(ranks).indices
        return by_rank[torch.sort(values[by_rank], descending=not lowest, stable=True).indices]
    # A float's bits read as an integer are in the float's order once the sign is applied
    # to the magnitude's bits (-0.0 and 0.0 both become 0).
    bits = values.view(torch.int32).long()
    key = torch.where(bits < 0, -(bits & 0x7FFFFFFF), bits)
    return torch.sort((key if lowest else -key) * 2**32 + ranks).indices


def gradient_growth(shape: torch.Size, gradient: Optional[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """DSL's growth: the gradient magnitude. Entries without gradient rank below every entry
    with one, in random order, so the budget is met even when a batch touches few rows."""
    random_scores = torch.rand(shape, generator=generator).to(gradient.device)
    return torch.where(gradient > 0, gradient, -random_scores)


def random_growth(shape: torch.Size, gradient: Optional[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """SET's growth: a random draw, whatever the gradient."""
    return torch.rand(shape, generator=generator)


GROWTH_RULES: Dict[str, GrowthRule] = {"gradient": gradient_growth, "random": random_growth}


def _active_columns(mask: torch.Tensor, prune: bool) -> slice:
    """The columns of a prefix mask that hold every entry pruning (the active ones) or
    growth (the inactive ones) can pick: ranking only them picks the same entries."""
    lengths = prefix_lengths(mask)
    if lengths.numel() == 0:
        return slice(0, mask.shape[1])
    return slice(0, int(lengths.max())) if prune else slice(int(lengths.min()), mask.shape[1])


def prune(
    magnitude: torch.Tensor, mask: torch.Tensor, k: int, structure: str = "unstructured", generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Flat indices of the ``k`` active entries of smallest ``magnitude`` (for a prefix
    mask, the ends of rows: see :func:`prune_scores`)."""
    if structure != "prefix":
        return select_lowest(prune_scores(magnitude, mask, structure), k, structure, generator)
    window = _active_columns(mask, prune=True)
    scores = prune_scores(magnitude[:, window], mask[:, window], structure)
    return _select(scores, k, structure, generator, lowest=True, first_column=window.start, columns=mask.shape[1])


def grow(
    scores: torch.Tensor, mask: torch.Tensor, k: int, structure: str = "unstructured", generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Flat indices of the ``k`` inactive entries of highest growth ``scores`` (for a prefix
    mask, the next entries of rows: see :func:`grow_scores`)."""
    if structure != "prefix":
        return select_highest(grow_scores(scores, mask, structure), k, structure, generator)
    window = _active_columns(mask, prune=False)
    ranked = grow_scores(scores[:, window], mask[:, window], structure)
    return _select(ranked, k, structure, generator, lowest=False, first_column=window.start, columns=mask.shape[1])
