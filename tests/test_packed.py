"""The packed embedding (values and positions) trains as the dense table with a mask does."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from recbole_dsl.sparse import CosineUpdateSchedule, MaskManager
from recbole_dsl.sparse.packed import PackedEmbedding, narrowest_index_dtype


def dense_copy(packed: PackedEmbedding):
    """The packed table as a dense weight and its mask."""
    weight = torch.zeros(packed.num_rows * packed.dim)
    weight[packed.keys()] = packed.values.detach()
    mask = torch.zeros(packed.num_rows * packed.dim, dtype=torch.bool)
    mask[packed.keys()] = True
    return weight.view(packed.num_rows, packed.dim), mask.view(packed.num_rows, packed.dim)


def bpr_loss(user, positive, negative):
    return -F.logsigmoid((user * positive).sum(-1) - (user * negative).sum(-1)).mean()


def test_the_layout_holds_exactly_the_budget_in_the_narrowest_types():
    packed = PackedEmbedding(1000, 64, 6500, generator=torch.Generator().manual_seed(0))
    _, mask = dense_copy(packed)
    assert packed.active == 6500 and int(mask.sum()) == 6500
    assert sorted(mask.sum(dim=1).bincount().nonzero().flatten().tolist()) == [6, 7]
    assert packed.columns.dtype == torch.uint8 and packed.row_offsets.dtype == torch.int16
    assert narrowest_index_dtype(2**31) == torch.int64 and narrowest_index_dtype(40_000) == torch.int32
    keys = packed.keys()
    assert torch.equal(keys, torch.sort(keys).values) and keys.unique().numel() == keys.numel()


def test_a_lookup_is_the_dense_rows_and_its_gradient_reaches_the_values():
    packed = PackedEmbedding(30, 8, 90, generator=torch.Generator().manual_seed(1))
    weight, _ = dense_copy(packed)
    rows = torch.tensor([[3, 7], [3, 29]])
    assert torch.equal(packed(rows), weight[rows])
    packed(rows).pow(2).sum().backward()
    expected = torch.zeros_like(weight)
    expected.index_add_(0, rows.flatten(), 2 * weight[rows.flatten()])
    assert torch.allclose(packed.values.grad, expected.flatten()[packed.keys()])


def test_training_with_exchanges_matches_the_mask_manager():
    """Adam on the values alone, with DSL's exchanges every third step: the same masks and
    the same weights as the mask manager training the dense table with a mask."""
    packed = PackedEmbedding(40, 8, 96, generator=torch.Generator().manual_seed(2))
    weight, mask = dense_copy(packed)
    table = nn.Embedding(40, 8)
    schedule = CosineUpdateSchedule(update_interval=3, init_update_ratio=0.1, end_iteration=12)
    manager = MaskManager(table, ["weight"], density=0.3, schedule=schedule)
    manager.set_mask("weight", mask)
    with torch.no_grad():
        table.weight.copy_(weight)
    dense_optimizer = torch.optim.Adam(table.parameters(), lr=0.05)
    manager.attach(dense_optimizer)
    packed_optimizer = torch.optim.Adam([packed.values], lr=0.05)
    batches = torch.Generator().manual_seed(3)
    exchanged = 0
    for step in range(1, 13):
        users, positives, negatives = torch.randint(0, 20, (16,), generator=batches), *torch.randint(20, 40, (2, 16), generator=batches)
        packed.keep_lookup_gradient = schedule.is_update_iteration(step)
        bpr_loss(packed(users), packed(positives), packed(negatives)).backward()
        bpr_loss(table(users), table(positives), table(negatives)).backward()
        if packed.keep_lookup_gradient:
            exchanged += packed.exchange(math.ceil(schedule.update_ratio(step) * packed.active), [packed_optimizer])
        packed_optimizer.step()
        dense_optimizer.step()
        packed_optimizer.zero_grad()
        dense_optimizer.zero_grad()
        packed_weight, packed_mask = dense_copy(packed)
        assert torch.equal(packed_mask, manager.masks["weight"]), step
        assert torch.allclose(packed_weight, table.weight.detach(), atol=1e-6), step
        assert packed.active == 96
    assert exchanged > 0


def test_growth_draws_at_random_beyond_the_rows_looked_up():
    packed = PackedEmbedding(100, 4, 40, generator=torch.Generator().manual_seed(4))
    packed.keep_lookup_gradient = True
    packed(torch.tensor([0, 1])).sum().backward()
    before = set(packed.keys().tolist())
    assert packed.exchange(30, [], generator=torch.Generator().manual_seed(5)) == 30
    after = set(packed.keys().tolist())
    assert len(after) == packed.active == 40 and len(after - before) >= 30 - 8
    assert {key // 4 for key in after - before} - {0, 1}  # more than the two rows' entries
    assert packed.looked_up == []
