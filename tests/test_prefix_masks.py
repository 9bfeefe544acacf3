"""Prune/grow as pure functions and the variable-length (prefix) embedding masks."""

import math

import pytest
import torch
from torch import nn

from recbole_dsl.sparse import CosineUpdateSchedule, MaskManager
from recbole_dsl.sparse.prune_grow import (
    grow,
    grow_scores,
    prefix_lengths,
    prefix_mask,
    prune,
    prune_scores,
    row_growth_scores,
    select_highest,
    select_lowest,
    uniform_prefix_mask,
)


def is_prefix(mask: torch.Tensor) -> bool:
    return torch.equal(mask, prefix_mask(prefix_lengths(mask), mask.shape[1]))


def test_uniform_prefix_mask_has_exact_budget_and_lengths_within_one():
    mask = uniform_prefix_mask(torch.Size([10, 8]), 23, torch.Generator().manual_seed(0))
    lengths = prefix_lengths(mask)
    assert int(mask.sum()) == 23 and is_prefix(mask)
    assert sorted(lengths.tolist()) == [2] * 7 + [3] * 3


def test_prefix_prune_shortens_rows_by_largest_magnitude_taken_along():
    mask = prefix_mask(torch.tensor([3, 2]), 4)
    magnitude = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.2, 0.3, 0.0, 0.0]])
    scores = prune_scores(magnitude, mask, "prefix")
    # row 0: pruning 0.1 takes 0.5 along, so it scores 0.5; row 1: 0.2 takes 0.3 along
    assert torch.equal(scores, torch.tensor([[0.9, 0.5, 0.5, math.inf], [0.3, 0.3, math.inf, math.inf]]))
    pruned = select_lowest(scores, 2, "prefix", torch.Generator().manual_seed(0))
    new = mask.clone()
    new.view(-1)[pruned] = False
    assert new.tolist() == [[True, True, True, False], [False, False, False, False]]
    # unstructured pruning of the same weights would cut into the middle of row 0
    flat = select_lowest(prune_scores(magnitude, mask), 2)
    assert sorted(flat.tolist()) == [1, 4]


def test_prefix_grow_lengthens_rows_by_smallest_gradient_brought_along():
    mask = prefix_mask(torch.tensor([1, 2]), 4)
    gradient = torch.tensor([[0.0, 0.1, 0.9, 0.8], [0.0, 0.0, 0.4, 0.3]])
    scores = grow_scores(gradient, mask, "prefix")
    assert torch.equal(scores, torch.tensor([[-math.inf, 0.1, 0.1, 0.1], [-math.inf, -math.inf, 0.4, 0.3]]))
    grown = select_highest(scores, 3, "prefix", torch.Generator().manual_seed(0))
    new = mask.clone()
    new.view(-1)[grown] = True
    assert new.tolist() == [[True, True, False, False], [True, True, True, True]]


def test_row_growth_shares_length_out_by_row_gradient_norm():
    mask = prefix_mask(torch.tensor([1, 1, 2]), 5)
    # no column past the second has a gradient: entry scores would grow there at random only
    gradient = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0], [3.0, 4.0, 0.0, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0, 0.0]])
    scores = row_growth_scores(gradient, mask)
    # the m-th column after a row's end scores the row's norm / m (row 0 has none)
    assert torch.allclose(scores, torch.tensor([[0.0] * 5, [0.0, 5.0, 2.5, 5 / 3, 1.25], [0.0, 0.0, 1.0, 0.5, 1 / 3]]))
    new = mask.clone()
    new.view(-1)[select_highest(grow_scores(scores, mask, "prefix"), 5, "prefix", torch.Generator().manual_seed(0))] = True
    # row 1's four columns (5 down to 1.25) come before row 2's first (1.0), and row 0 has no gradient
    assert prefix_lengths(new).tolist() == [1, 5, 3]


@pytest.mark.parametrize("seed", range(5))
def test_prefix_selection_keeps_rows_prefixes_under_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    mask = uniform_prefix_mask(torch.Size([30, 6]), 70, generator)
    ties = torch.zeros(30, 6)  # every score equal: only the tie order decides
    for k in (1, 7, 40, 70):
        pruned = mask.clone()
        pruned.view(-1)[select_lowest(prune_scores(ties, mask, "prefix"), k, "prefix", generator)] = False
        assert is_prefix(pruned) and int(pruned.sum()) == 70 - k
        grown = mask.clone()
        grown.view(-1)[select_highest(grow_scores(ties, mask, "prefix"), k, "prefix", generator)] = True
        assert is_prefix(grown) and int(grown.sum()) == 70 + k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # one integer key, or two sorts
@pytest.mark.parametrize("lowest", [True, False])
def test_prefix_selection_is_a_stable_sort_in_tie_order(lowest, dtype):
    # The selection avoids sorting every score; it must pick (and order) exactly the first k
    # of a stable sort of the scores laid out in tie order, with many ties, negative scores,
    # signed zeros and infinities.
    for trial in range(100):
        data = torch.Generator().manual_seed(trial)
        rows, columns = int(torch.randint(1, 30, (1,), generator=data)), int(torch.randint(1, 9, (1,), generator=data))
        scores = torch.randint(-2, 3, (rows, columns), generator=data).to(dtype) / 2
        scores[torch.rand(rows, columns, generator=data) < 0.2] = math.inf if trial % 2 else -math.inf
        scores[torch.rand(rows, columns, generator=data) < 0.1] = -0.0  # equal to 0.0
        k = int(torch.randint(0, rows * columns + 1, (1,), generator=data))
        # Tie order: by column (last first when pruning), rows in a random order per column.
        row_order = torch.randperm(rows, generator=torch.Generator().manual_seed(trial))
        column_order = torch.arange(columns - 1, -1, -1) if lowest else torch.arange(columns)
        order = (row_order.unsqueeze(0) * columns + column_order.unsqueeze(1)).flatten()
        expected = order[torch.sort(scores.flatten()[order], descending=not lowest, stable=True).indices[:k]]
        select = select_lowest if lowest else select_highest
        chosen = select(scores, k, "prefix", torch.Generator().manual_seed(trial))
        assert torch.equal(chosen, expected), trial


@pytest.mark.parametrize("trial", range(40))
def test_prefix_prune_and_grow_rank_only_the_columns_they_can_pick(trial):
    # prune ranks the columns up to the longest row, grow those from the shortest: the
    # entries and their order must be those of ranking the whole table, ties included.
    data = torch.Generator().manual_seed(trial)
    rows, columns = int(torch.randint(1, 40, (1,), generator=data)), int(torch.randint(1, 12, (1,), generator=data))
    lengths = torch.randint(0, columns + 1, (rows,), generator=data)
    if trial % 3 == 0:
        lengths = lengths.clamp(2, columns - 1 if columns > 3 else columns)  # no empty or full row
    mask = prefix_mask(lengths, columns)
    nnz = int(mask.sum())
    values = torch.randint(0, 4, (rows, columns), generator=data).float() / 4  # many ties
    for k in {min(1, nnz), nnz // 3, nnz}:
        expected = select_lowest(prune_scores(values, mask, "prefix"), k, "prefix", torch.Generator().manual_seed(trial))
        assert torch.equal(prune(values, mask, k, "prefix", torch.Generator().manual_seed(trial)), expected)
    inactive = mask.numel() - nnz
    for k in {min(1, inactive), inactive // 3, inactive}:
        expected = select_highest(grow_scores(values, mask, "prefix"), k, "prefix", torch.Generator().manual_seed(trial))
        assert torch.equal(grow(values, mask, k, "prefix", torch.Generator().manual_seed(trial)), expected)


class DotProduct(nn.Module):
    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(40, 8)
        self.item = nn.Embedding(60, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, users, items):
        return (self.proj(self.user(users)) * self.item(items)).sum(-1)


@pytest.mark.parametrize("shared_budget, prefix_growth", [(False, "entry"), (True, "entry"), (False, "row")])
def test_prefix_manager_keeps_budget_zeros_and_prefixes_through_training(shared_budget, prefix_growth):
    torch.manual_seed(0)
    model = DotProduct()
    if shared_budget:
        model.proj.weight.requires_grad_(False)
    names = ["user.weight", "item.weight"] + ([] if shared_budget else ["proj.weight"])
    schedule = CosineUpdateSchedule(update_interval=3, init_update_ratio=0.5, min_update_ratio=0.0, end_iteration=30)
    updates = []
    manager = MaskManager(
        model, names, 0.25, schedule, shared_budget=shared_budget, on_update=updates.append,
        prefix_names=["user.weight", "item.weight"], grown_init_scale=0.1, prefix_growth=prefix_growth,
    )
    assert manager.structures == {n: "prefix" if "proj" not in n else "unstructured" for n in names}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    manager.attach(optimizer)
    lengths_seen = set()
    for _ in range(30):
        users, items = torch.randint(0, 40, (32,)), torch.randint(0, 60, (32,))
        optimizer.zero_grad()
        model(users, items).sigmoid().log().neg().mean().backward()
        optimizer.step()
        for name in names:
            mask, weight = manager.masks[name], manager.param(name)
            assert torch.all(weight[~mask] == 0)
            if name != "proj.weight":
                assert is_prefix(mask)
        if shared_budget:
            assert sum(manager.nnz().values()) == sum(manager.budgets.values())
        else:
            assert manager.nnz() == manager.budgets
        lengths_seen.add(tuple(prefix_lengths(manager.masks["user.weight"]).tolist()))
    assert len(updates) == 10 and all(u.exchanged > 0 for u in updates[:-1])
    assert len(lengths_seen) > 1  # lengths really moved between rows
    if prefix_growth == "row":  # past the two columns every row starts with
        assert max(max(lengths) for lengths in lengths_seen) > 2


@pytest.mark.parametrize("prefix_growth", ["entry", "row"])
def test_only_row_growth_lengthens_rows_past_the_other_tables_reach(prefix_growth):
    torch.manual_seed(0)
    users, items = nn.Embedding(6, 8), nn.Embedding(10, 8)
    model = nn.ModuleDict({"user": users, "item": items})
    schedule = CosineUpdateSchedule(update_interval=0, init_update_ratio=0.5, min_update_ratio=0.0)
    manager = MaskManager(
        model, ["user.weight", "item.weight"], 0.25, schedule, prefix_names=["user.weight", "item.weight"],
        grown_init_scale=0.1, prefix_growth=prefix_growth,
    )
    # every pair in the batch: each entry in the first two columns has a gradient, none after
    (users.weight @ items.weight.T - torch.randn(6, 10)).pow(2).sum().backward()
    manager.update_masks(0.5)
    lengths = {n: prefix_lengths(manager.masks[n]) for n in manager.names}
    assert manager.nnz() == manager.budgets
    longest = max(int(length.max()) for length in lengths.values())
    assert longest == 2 if prefix_growth == "entry" else longest > 2


def test_grown_prefix_entries_start_small_and_random_with_fresh_state():
    torch.manual_seed(3)
    model = DotProduct()
    schedule = CosineUpdateSchedule(update_interval=0, init_update_ratio=0.5, min_update_ratio=0.0, end_iteration=10)
    manager = MaskManager(model, ["user.weight"], 0.25, schedule, prefix_names=["user.weight"], grown_init_scale=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    manager.attach(optimizer)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.arange(40), torch.arange(40)).pow(2).mean().backward()
        optimizer.step()
    before = manager.masks["user.weight"].clone()  # every row has 2 of 8 columns
    with torch.no_grad():
        model.user.weight[20:] *= 1e-3  # the last 20 rows lose their length to the first 20
    gradient = torch.zeros(40, 8)
    gradient[:20] = 1.0
    model.user.weight.grad = gradient
    manager.update_masks(0.5)  # k = 40
    lengths = prefix_lengths(manager.masks["user.weight"])
    assert lengths.tolist() == [4] * 20 + [0] * 20
    grown = manager.masks["user.weight"] & ~before
    values = model.user.weight.detach()[grown]
    kept_rms = float(model.user.weight.detach()[:20, :2].pow(2).mean().sqrt())
    assert torch.count_nonzero(values) == values.numel() == 40
    assert float(values.abs().max()) < 0.6 * kept_rms  # 0.1 of the RMS, a few standard deviations at most
    state = optimizer.state[model.user.weight]
    assert torch.all(state["exp_avg"][grown] == 0) and torch.all(state["exp_avg_sq"][grown] == 0)
    assert torch.all(model.user.weight.detach()[20:] == 0)


def test_prefix_needs_2d_tensors_in_the_selection():
    model = DotProduct()
    schedule = CosineUpdateSchedule(1, 0.5, 0.0, 10)
    with pytest.raises(ValueError, match="2-D tensor"):
        MaskManager(model, ["proj.bias"], 0.5, schedule, prefix_names=["proj.bias"])
    with pytest.raises(ValueError, match="not among"):
        MaskManager(model, ["user.weight"], 0.5, schedule, prefix_names=["item.weight"])
    with pytest.raises(ValueError, match="mask structure and width"):
        MaskManager(model, ["user.weight", "proj.weight"], 0.5, schedule, shared_budget=True, prefix_names=["user.weight"])


def test_regrown_entries_keep_their_value_and_state_only_when_asked():
    def run(keep: bool):
        torch.manual_seed(4)
        model = DotProduct()
        schedule = CosineUpdateSchedule(update_interval=0, init_update_ratio=0.5, min_update_ratio=0.0, end_iteration=10)
        manager = MaskManager(model, ["user.weight"], 0.5, schedule, prefix_names=["user.weight"],
                              grown_init_scale=0.1, regrown_keep_values=keep)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        manager.attach(optimizer)
        optimizer.zero_grad()
        model(torch.arange(40), torch.arange(40)).pow(2).mean().backward()
        optimizer.step()
        before = model.user.weight.detach().clone()
        state_before = optimizer.state[model.user.weight]["exp_avg"].clone()
        # The last active column of every row (4 of 8) is small, so rows are shortened there;
        # its gradient is the only one, so they are lengthened straight back.
        with torch.no_grad():
            model.user.weight[:, 3] = 1e-6
        before[:, 3] = 1e-6
        gradient = torch.zeros(40, 8)
        gradient[:, 3] = 1.0
        model.user.weight.grad = gradient
        mask_before = manager.masks["user.weight"].clone()
        exchanged = manager.update_masks(0.1)
        assert torch.equal(manager.masks["user.weight"], mask_before)
        return exchanged, before, model.user.weight.detach(), state_before, optimizer.state[model.user.weight]["exp_avg"]

    exchanged, before, after, state_before, state_after = run(keep=True)
    assert exchanged == 0 and torch.equal(before, after) and torch.equal(state_before, state_after)
    exchanged, before, after, state_before, state_after = run(keep=False)
    assert exchanged > 0 and not torch.equal(before, after) and not torch.equal(state_before, state_after)
