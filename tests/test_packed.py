"""The packed embedding (values and positions) trains as the dense table with a mask does."""

import math

import pytest
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
    packed = PackedEmbedding.random(1000, 64, 6500, generator=torch.Generator().manual_seed(0))
    _, mask = dense_copy(packed)
    assert packed.active == 6500 and int(mask.sum()) == 6500
    assert sorted(mask.sum(dim=1).bincount().nonzero().flatten().tolist()) == [6, 7]
    assert packed.columns.dtype == torch.uint8 and packed.row_offsets.dtype == torch.int16
    assert narrowest_index_dtype(2**31) == torch.int64 and narrowest_index_dtype(40_000) == torch.int32
    keys = packed.keys()
    assert torch.equal(keys, torch.sort(keys).values) and keys.unique().numel() == keys.numel()


def test_a_lookup_is_the_dense_rows_and_its_gradient_reaches_the_values():
    packed = PackedEmbedding.random(30, 8, 90, generator=torch.Generator().manual_seed(1))
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
    packed = PackedEmbedding.random(40, 8, 96, generator=torch.Generator().manual_seed(2))
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
    packed = PackedEmbedding.random(100, 4, 40, generator=torch.Generator().manual_seed(4))
    packed.keep_lookup_gradient = True
    packed(torch.tensor([0, 1])).sum().backward()
    before = set(packed.keys().tolist())
    assert packed.exchange(30, [], generator=torch.Generator().manual_seed(5)) == 30
    after = set(packed.keys().tolist())
    assert len(after) == packed.active == 40 and len(after - before) >= 30 - 8
    assert {key // 4 for key in after - before} - {0, 1}  # more than the two rows' entries
    assert packed.looked_up == []


class TwoTables(nn.Module):
    """A model that looks rows up (one table with a padding row) and reads a table whole."""

    def __init__(self):
        super().__init__()
        self.users = nn.Embedding(20, 8)
        self.items = nn.Embedding(30, 8, padding_idx=0)
        self.scale = nn.Linear(8, 8, bias=False)

    def loss(self, users, positives, negatives):
        user = self.scale(self.users(users))
        scores = user @ self.items.weight.t()  # every item, as a full-sort score
        history = self.items(positives).sum(1)
        return -F.logsigmoid(scores.gather(1, positives[:, :1]) - scores.gather(1, negatives)).mean() + (user * history).mean()


# The exploration of every method that packs: DSL's (made on the packed layout), and those
# made on a dense view of the table: growth by the interval's gradient, variable-length
# rows with random grown values (dsl_mixed's), random growth (SET's).
EXPLORATIONS = {
    "dsl": {},
    "interval": dict(growth_gradient="interval"),
    "dsl_mixed": dict(prefix_names=["users.weight", "items.weight"], grown_init_scale=0.1, growth_gradient="interval"),
    "set": dict(growth="random"),
}


def trained_pair(steps: int, **settings):
    """The same model trained with masks and with its tables packed: both managers."""
    managers = []
    for packed in (False, True):
        torch.manual_seed(0)
        model = TwoTables()
        schedule = CosineUpdateSchedule(update_interval=3, init_update_ratio=0.3, end_iteration=steps)
        manager = MaskManager(
            model, ["users.weight", "items.weight", "scale.weight"], density=0.25, schedule=schedule, seed=1, **settings
        )
        initial_masks = {name: mask.clone() for name, mask in manager.masks.items()}
        if packed:
            manager.pack("users.weight")
            manager.pack("items.weight")
        optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
        manager.attach(optimizer)
        batches = torch.Generator().manual_seed(2)
        for _ in range(steps):
            users = torch.randint(0, 20, (16,), generator=batches)
            positives, negatives = torch.randint(0, 30, (16, 3), generator=batches), torch.randint(0, 30, (16, 1), generator=batches)
            model.loss(users, positives, negatives).backward()
            optimizer.step()
            optimizer.zero_grad()
        assert not torch.equal(manager.masks["items.weight"], initial_masks["items.weight"])
        managers.append((model, manager))
    return managers


@pytest.mark.parametrize("exploration", EXPLORATIONS)
def test_packed_tables_in_a_model_train_as_masked_ones(exploration):
    """Lookups, a padding row and a table read whole: the same masks and weights as the
    masked model after every exchange, with optimizer state for the budget alone."""
    (masked, masked_manager), (packed, packed_manager) = trained_pair(steps=12, **EXPLORATIONS[exploration])
    assert isinstance(packed.users, PackedEmbedding) and isinstance(packed.scale, nn.Linear)
    assert packed_manager.packed_names == ["users.weight", "items.weight"]
    for name in masked_manager.names:
        assert torch.equal(masked_manager.masks[name], packed_manager.masks[name]), name
    assert packed_manager.iteration == 12 and packed_manager.nnz() == masked_manager.nnz()
    masked_state, packed_state = masked.state_dict(), packed.state_dict()
    assert masked_state.keys() == packed_state.keys()
    for name, tensor in masked_state.items():
        assert torch.allclose(tensor, packed_state[name], atol=1e-6), name
    assert packed.items.values.numel() == round(0.25 * 30 * 8)
    assert packed_manager.optimizers[0].state[packed.items.values]["exp_avg"].shape == (60,)
    state = packed_manager.train_state_bytes()
    assert state["train_state_bytes_dense"] == masked_manager.train_state_bytes()["train_state_bytes_dense"]
    assert state["train_state_bytes"] < 0.5 * state["train_state_bytes_dense"]


def test_a_packed_model_saves_loads_and_unpacks_as_a_masked_one():
    (masked, masked_manager), (packed, packed_manager) = trained_pair(steps=7)
    # Masks first, then the dense weights: a fresh packed model takes the checkpoint's values.
    torch.manual_seed(5)
    fresh = TwoTables()
    manager = MaskManager(fresh, ["users.weight", "items.weight", "scale.weight"], density=0.25, schedule=CosineUpdateSchedule(3, 0.3), seed=9)
    manager.pack("users.weight")
    manager.pack("items.weight")
    manager.load_state_dict(packed_manager.state_dict())
    fresh.load_state_dict(packed.state_dict())
    for name, tensor in packed.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    packed_manager.unpack()
    assert type(packed.items) is nn.Embedding and packed.items.padding_idx == 0 and packed_manager.packed_names == []
    for name, tensor in masked.state_dict().items():
        assert torch.allclose(packed.state_dict()[name], tensor, atol=1e-6), name
    assert torch.equal(packed_manager.masks["items.weight"], masked_manager.masks["items.weight"])


@pytest.mark.parametrize(
    "settings, name, reason",
    [
        (dict(growth_gradient="momentum"), "users.weight", "momentum"),
        (dict(regrown_keep_values=True), "users.weight", "keep their values"),
        (dict(dense_start=True), "users.weight", "trains dense first"),
        (dict(shared_budget=True), "users.weight", "shared"),
        (dict(), "scale.weight", "not the weight of an nn.Embedding"),
    ],
)
def test_packing_refuses_what_its_exchange_does_not_make(settings, name, reason):
    manager = MaskManager(TwoTables(), ["users.weight", "scale.weight"], density=0.25, schedule=CosineUpdateSchedule(3, 0.3), **settings)
    with pytest.raises(ValueError, match=reason):
        manager.pack(name)
