"""The pure-PyTorch core: budgets, schedule, prune/grow, optimizer state, persistence."""

import io
import math
import time

import pytest
import torch
from torch import nn

from recbole_dsl.sparse import (
    CosineUpdateSchedule,
    MaskManager,
    layer_densities,
    round_budget,
    select_parameters,
)
from recbole_dsl.sparse.initialization import scale_to_active_fan_in_


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(50, 8)
        self.item = nn.Embedding(70, 8)
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, users, items):
        return (self.norm(self.proj(self.user(users))) * self.item(items)).sum(-1)


def schedule(update_interval=3, init_update_ratio=0.5, end_iteration=30, min_update_ratio=0.0):
    return CosineUpdateSchedule(update_interval, init_update_ratio, min_update_ratio, end_iteration)


def assert_invariant(manager: MaskManager):
    for name in manager.names:
        p, m = manager.param(name), manager.masks[name]
        assert torch.all(p[~m] == 0), f"{name} has non-zero inactive weights"
    if len(manager.groups) == len(manager.names):
        assert manager.nnz() == manager.budgets
    else:
        assert sum(manager.nnz().values()) == sum(manager.budgets.values())


def test_select_parameters():
    model = TwoTower()
    assert select_parameters(model, "all") == ["user.weight", "item.weight", "proj.weight"]
    assert select_parameters(model, "embeddings") == ["user.weight", "item.weight"]
    assert select_parameters(model, ["^item", r"proj\.bias"]) == ["item.weight", "proj.bias"]
    model.item.weight.requires_grad_(False)
    assert select_parameters(model, "all") == ["user.weight", "proj.weight"]


def test_round_budget_and_erk_densities():
    assert round_budget(0.1, 60416) == 6042  # 6041.6 rounds to the nearest integer
    assert round_budget(0.5, 3) == 2
    shapes = {"big": torch.Size([1000, 64]), "small": torch.Size([8, 8])}
    densities = layer_densities(shapes, 0.1, "erk")
    total = sum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert total == pytest.approx(0.1 * sum(math.prod(s) for s in shapes.values()))
    assert densities["small"] == 1.0 and densities["big"] < 0.1
    assert layer_densities(shapes, 0.1, "uniform") == {"big": 0.1, "small": 0.1}


@pytest.mark.parametrize("distribution", ["uniform", "erk"])
def test_init_budget_exact_and_zeros(distribution):
    model = TwoTower()
    manager = MaskManager(model, select_parameters(model, "all"), 0.2, schedule(), distribution=distribution)
    if distribution == "uniform":
        assert manager.budgets == {"user.weight": 80, "item.weight": 112, "proj.weight": 13}
    assert_invariant(manager)
    assert torch.count_nonzero(model.proj.bias) > 0  # biases stay dense


def test_schedule_matches_formula():
    s = CosineUpdateSchedule(update_interval=10, init_update_ratio=0.4, min_update_ratio=0.01, end_iteration=100)
    for t in (0, 10, 25, 50, 90, 100):
        expected = 0.01 + (0.4 - 0.01) * (1 + math.cos(math.pi * t / 100)) / 2
        assert s.update_ratio(t) == pytest.approx(expected)
    assert s.update_ratio(0) == pytest.approx(0.4) and s.update_ratio(100) == pytest.approx(0.01)
    assert [t for t in range(0, 131) if s.is_update_iteration(t)] == list(range(10, 101, 10))
    assert not any(CosineUpdateSchedule(0, 0.5, 0.0, 100).is_update_iteration(t) for t in range(200))


def hand_built():
    """One 2x4 tensor whose mask, weights and gradient are set by hand."""
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(2, 4))
    manager = MaskManager(model, ["w"], 0.5, schedule())
    manager.set_mask("w", torch.tensor([[True, True, False, False], [True, True, False, False]]))
    with torch.no_grad():
        model.w.copy_(torch.tensor([[0.9, -0.1, 0, 0], [0.5, 0.3, 0, 0]]))
    model.w.grad = torch.tensor([[0.0, 0.0, 0.2, -0.7], [0.0, 0.0, 0.05, 0.1]])
    return model, manager


def test_prune_smallest_magnitude_grow_largest_gradient():
    model, manager = hand_built()
    assert manager.update_masks(0.5) == 2  # k = ceil(0.5 * 4)
    # pruned: -0.1 and 0.3 (smallest |w|); grown: -0.7 and 0.2 (largest |grad|)
    assert manager.masks["w"].tolist() == [[True, False, True, True], [True, False, False, False]]
    assert torch.equal(model.w.detach(), torch.tensor([[0.9, 0, 0, 0], [0.5, 0, 0, 0]]))
    assert manager.nnz() == {"w": 4}


def test_just_pruned_entry_can_come_back_at_zero():
    model, manager = hand_built()
    model.w.grad = torch.tensor([[0.0, 5.0, 0.2, 0.0], [0.0, 0.0, 0.0, 0.0]])
    manager.update_masks(0.25)  # k = 1: prune -0.1, regrow it (largest gradient)
    assert manager.masks["w"].tolist() == [[True, True, False, False], [True, True, False, False]]
    assert model.w[0, 1].item() == 0.0


def test_prune_and_grow_are_functions_of_scores_mask_and_k():
    from recbole_dsl.sparse.prune_grow import GROWTH_RULES, grow, prune

    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    weights = torch.tensor([[0.9, -0.1, 0.0, 0.0], [0.5, 0.3, 0.0, 0.0]])
    pruned = prune(weights.abs(), mask, 2)
    assert sorted(pruned.tolist()) == [1, 5]  # the two smallest active magnitudes
    after = mask.clone().view(-1)
    after[pruned] = False
    gradient = torch.tensor([[0.0, 0.0, 0.2, -0.7], [0.0, 0.0, 0.0, 0.1]]).abs()
    generator = torch.Generator().manual_seed(0)
    scores = GROWTH_RULES["gradient"](mask.shape, gradient, generator)
    grown = grow(scores, after.view(mask.shape), 2, generator=generator)
    assert sorted(grown.tolist()) == [2, 3]  # the largest gradients among inactive entries
    assert not bool(after.view(mask.shape).view(-1)[grown].any())  # only inactive entries grow
    # A rule is any function of (shape, gradient, generator): one that prefers the last column.
    last_column = grow(torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 2.0]]), after.view(mask.shape), 2)
    assert sorted(last_column.tolist()) == [3, 7]


def test_set_mask_replaces_the_storage_and_zeroes_what_it_deactivates():
    model, manager = hand_built()
    with torch.no_grad():
        model.w.copy_(torch.tensor([[0.9, -0.1, 0, 0], [0.5, 0.3, 0, 0]]))
    manager.set_mask("w", torch.tensor([[1, 0, 0, 0], [1, 1, 0, 1]]))
    assert manager.masks["w"].dtype == torch.bool and manager.storage["w"].mask is manager.masks["w"]
    assert torch.equal(model.w.detach(), torch.tensor([[0.9, 0, 0, 0], [0.5, 0.3, 0, 0]]))


def test_random_growth_keeps_budget_and_prunes_by_magnitude():
    model, manager = hand_built()
    manager.growth = "random"
    manager.update_masks(0.5)
    assert manager.nnz() == {"w": 4}
    assert manager.masks["w"][0, 0] and manager.masks["w"][1, 0]  # the two largest weights survive


def test_budget_exact_when_few_inactive_entries_have_gradient():
    """An embedding batch touches few rows: fewer non-zero gradients than weights to grow."""
    model = nn.Module()
    model.table = nn.Parameter(torch.randn(100, 8))
    manager = MaskManager(model, ["table"], 0.3, schedule())
    grad = torch.zeros(100, 8)
    grad[[3, 7]] = torch.randn(2, 8).abs() + 0.1
    model.table.grad = grad
    inactive_with_grad = int((~manager.masks["table"] & (grad != 0)).sum())
    k = manager.update_masks(0.5)
    assert k == 120 > inactive_with_grad
    assert manager.nnz() == {"table": 240}
    assert torch.all(manager.masks["table"][[3, 7]])  # every row with a gradient was grown first
    assert_invariant(manager)


def test_shared_budget_ranks_across_tensors():
    model = nn.Module()
    model.a = nn.Parameter(torch.full((10,), 0.01))
    model.b = nn.Parameter(torch.full((10,), 5.0))
    manager = MaskManager(model, ["a", "b"], 0.5, schedule(), shared_budget=True)
    model.a.grad = torch.zeros(10)
    model.b.grad = torch.ones(10)
    manager.update_masks(1.0)  # every active weight of a (small) is pruned in favour of b
    assert manager.nnz() == {"a": 0, "b": 10}
    assert_invariant(manager)


def test_grown_entries_get_fresh_adam_state_and_pruned_stay_dead():
    torch.manual_seed(0)
    model = TwoTower()
    manager = MaskManager(model, select_parameters(model, "all"), 0.2, schedule(update_interval=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    manager.attach(optimizer)
    # Every row in every batch, so every active weight has optimizer state before the update.
    users, items = torch.arange(70) % 50, torch.arange(70)
    for _ in range(3):
        optimizer.zero_grad()
        model(users, items).pow(2).mean().backward()
        optimizer.step()
    before = manager.masks["item.weight"].clone()
    state = optimizer.state[model.item.weight]
    moments_before = state["exp_avg"].clone()
    optimizer.zero_grad()
    model(users, items).pow(2).mean().backward()  # the dense gradient an update ranks, as in _pre_step
    manager.update_masks(0.5)
    after = manager.masks["item.weight"]
    grown, pruned = after & ~before, before & ~after
    assert grown.any() and pruned.any()
    assert (moments_before[pruned] != 0).sum() >= 3  # the reset has something to do
    assert torch.all(state["exp_avg"][grown | pruned] == 0)
    assert torch.all(state["exp_avg_sq"][grown | pruned] == 0)
    assert torch.all(model.item.weight[grown] == 0)
    for _ in range(5):  # momentum must not bring pruned weights back
        optimizer.zero_grad()
        model(users, items).pow(2).mean().backward()
        optimizer.step()
        assert_invariant(manager)


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad, torch.optim.RMSprop])
@pytest.mark.parametrize("shared_budget", [False, True])
def test_invariant_after_every_step_and_update(optimizer_class, shared_budget):
    torch.manual_seed(1)
    model = TwoTower()
    updates = []
    manager = MaskManager(
        model, select_parameters(model, "all"), 0.1, schedule(update_interval=4, end_iteration=40),
        shared_budget=shared_budget, on_update=updates.append,
    )
    optimizer = optimizer_class(model.parameters(), lr=0.05)
    manager.attach(optimizer)
    masks_seen = set()
    for step in range(40):
        users, items = torch.randint(0, 50, (16,)), torch.randint(0, 70, (16,))
        optimizer.zero_grad()
        model(users, items).sigmoid().log().neg().mean().backward()
        optimizer.step()
        assert_invariant(manager)
        masks_seen.add(manager.masks["item.weight"].numpy().tobytes())
    assert [u.iteration for u in updates] == list(range(4, 41, 4))
    assert updates[0].update_ratio == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 40)) / 2)
    assert all(u.exchanged > 0 for u in updates[:-1])
    assert len(masks_seen) > 1  # the masks really moved


class GradientMasking(MaskManager):
    """The reference: gradients of inactive entries zeroed before every step as well."""

    def _pre_step(self, optimizer, args, kwargs):
        super()._pre_step(optimizer, args, kwargs)
        for name, param in self._owned_tensors(optimizer):
            param.grad.mul_(self.masks[name])


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=0.05),
    "adam_fused": lambda params: torch.optim.Adam(params, lr=0.05, fused=True),
    "adagrad_fused": lambda params: torch.optim.Adagrad(params, lr=0.05, fused=True),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.05, weight_decay=0.1),
    "sgd_momentum": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=0.01),
    "rmsprop_momentum": lambda params: torch.optim.RMSprop(params, lr=0.01, momentum=0.9, centered=True),
    "adagrad": lambda params: torch.optim.Adagrad(params, lr=0.05, initial_accumulator_value=0.1),
}


@pytest.mark.parametrize("optimizer_name", sorted(OPTIMIZERS))
def test_one_masking_pass_trains_as_masked_gradients_do(optimizer_name):
    # Only the weights are masked after each step; the state an optimizer builds at inactive
    # entries is reset when they are grown, so every weight follows the steps it would take
    # with masked gradients, through many mask updates.
    runs = []
    for manager_class in (MaskManager, GradientMasking):
        torch.manual_seed(3)
        model = TwoTower()
        manager = manager_class(model, select_parameters(model, "all"), 0.2, schedule(update_interval=3, end_iteration=60))
        optimizer = OPTIMIZERS[optimizer_name](model.parameters())
        manager.attach(optimizer)
        data = torch.Generator().manual_seed(4)
        for _ in range(60):
            users, items = torch.randint(0, 50, (32,), generator=data), torch.randint(0, 70, (32,), generator=data)
            optimizer.zero_grad()
            model(users, items).sigmoid().log().neg().mean().backward()
            optimizer.step()
            assert_invariant(manager)
        runs.append((model, manager))
    (model, manager), (reference, reference_manager) = runs
    assert manager.iteration == 60
    for name in manager.names:
        assert torch.equal(manager.masks[name], reference_manager.masks[name])
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_clipping_counts_the_active_entries_only():
    model = TwoTower()
    manager = MaskManager(model, ["user.weight"], 0.25, schedule())
    model.user.weight.grad = torch.ones(50, 8)
    model.item.weight.grad = torch.full((70, 8), 0.5)
    inactive_gradient = model.user.weight.grad[~manager.masks["user.weight"]].clone()
    norm = manager.clip_grad_norm_([model.user.weight, model.item.weight], max_norm=1.0)
    expected = math.sqrt(manager.budgets["user.weight"] * 1.0 + 70 * 8 * 0.25)  # not sqrt(50 * 8 + 70 * 8 * 0.25)
    assert float(norm) == pytest.approx(expected)
    scale = 1.0 / (expected + 1e-6)
    assert torch.allclose(model.item.weight.grad, torch.full((70, 8), 0.5 * scale))
    # Every gradient is scaled by the one coefficient; the inactive ones are kept for growth.
    assert torch.allclose(model.user.weight.grad[~manager.masks["user.weight"]], inactive_gradient * scale)
    active = torch.cat([model.user.weight.grad[manager.masks["user.weight"]], model.item.weight.grad.flatten()])
    assert float(active.norm()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(TypeError, match="unexpected"):
        manager.clip_grad_norm_(model.parameters(), max_norm=1.0, max_nrom=2.0)


def test_scaled_init_gives_each_unit_the_input_variance_of_its_dense_initialization():
    torch.manual_seed(0)
    dense = nn.Linear(2000, 64, bias=False).weight.detach().clone()
    mask = torch.rand(dense.shape) < 0.1
    mask[3] = False  # a unit left without any input
    sparse = dense * mask
    scale_to_active_fan_in_(sparse, mask)

    active = mask.sum(dim=1)
    for row in range(64):
        factor = math.sqrt(2000 / int(active[row])) if active[row] else 1.0
        assert torch.allclose(sparse[row], dense[row] * mask[row] * factor)
    assert torch.all(sparse[~mask] == 0) and torch.all(sparse[3] == 0)
    # A unit's output variance for inputs of unit variance is the sum of its squared weights:
    # masked alone it keeps about a tenth of the dense one, scaled it keeps all of it.
    masked = ((dense * mask).pow(2).sum(dim=1) / dense.pow(2).sum(dim=1))[active > 0]
    scaled = (sparse.pow(2).sum(dim=1) / dense.pow(2).sum(dim=1))[active > 0]
    assert 0.07 < float(masked.mean()) < 0.13
    assert 0.9 < float(scaled.mean()) < 1.1
    with pytest.raises(ValueError, match="2\\+ dimensions"):
        scale_to_active_fan_in_(torch.ones(4), torch.ones(4, dtype=torch.bool))


def test_manager_scales_the_initial_weights_of_the_tensors_named_only():
    torch.manual_seed(0)
    model = TwoTower()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    manager = MaskManager(model, ["user.weight", "proj.weight"], 0.25, schedule(), scaled_init_names=["proj.weight"])
    mask = manager.masks["proj.weight"]
    factor = (8 / mask.sum(dim=1).clamp(min=1)).sqrt().unsqueeze(1)
    assert manager.scaled_init_names == ["proj.weight"]
    assert torch.allclose(model.proj.weight, before["proj.weight"] * mask * factor)
    assert torch.equal(model.user.weight, before["user.weight"] * manager.masks["user.weight"])
    assert_invariant(manager)

    dense_start = MaskManager(TwoTower(), ["proj.weight"], 0.25, schedule(), dense_start=True, scaled_init_names=["proj.weight"])
    assert dense_start.scaled_init_names == []  # a dense model is initialized for its dense fan-in already
    with pytest.raises(ValueError, match="scaled_init_names"):
        MaskManager(TwoTower(), ["proj.weight"], 0.25, schedule(), scaled_init_names=["user.weight"])


def test_static_mask_never_changes():
    model = TwoTower()
    manager = MaskManager(model, select_parameters(model, "all"), 0.3, schedule(update_interval=0))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    manager.attach(optimizer)
    initial = {n: m.clone() for n, m in manager.masks.items()}
    for _ in range(10):
        optimizer.zero_grad()
        model(torch.arange(10), torch.arange(10)).sum().backward()
        optimizer.step()
    assert all(torch.equal(initial[n], manager.masks[n]) for n in initial)
    assert manager.iteration == 10
    assert_invariant(manager)
    assert manager.seconds["hooks"] > 0 and manager.seconds["updates"] == 0  # masking, no update


def test_the_time_in_the_hooks_and_in_the_updates_is_counted_and_kept_with_the_state():
    model = TwoTower()
    manager = MaskManager(model, select_parameters(model, "all"), 0.3, schedule(update_interval=2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    manager.attach(optimizer)
    outside = time.perf_counter()
    for step in range(6):
        optimizer.zero_grad()
        model(torch.arange(10), torch.arange(10)).sum().backward()
        optimizer.step()
        if step == 0:
            assert manager.seconds["updates"] == 0  # no update at the first step
    outside = time.perf_counter() - outside
    assert 0 < manager.seconds["updates"] < manager.seconds["hooks"] < outside
    restored = MaskManager(TwoTower(), select_parameters(model, "all"), 0.3, schedule(update_interval=2))
    restored.load_state_dict(manager.state_dict())
    assert restored.seconds == manager.seconds


def test_dense_manager_attaches_no_hooks():
    model = TwoTower()
    manager = MaskManager(model, select_parameters(model, "all"), 1.0, schedule())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    manager.attach(optimizer)
    assert manager.is_dense and not optimizer._optimizer_step_pre_hooks
    assert manager.overall_density() == 1.0


def test_state_dict_round_trip_weights_only():
    torch.manual_seed(2)
    model = TwoTower()
    manager = MaskManager(model, select_parameters(model, "all"), 0.2, schedule(), seed=5)
    manager.iteration = 17
    buffer = io.BytesIO()
    torch.save(manager.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    other = TwoTower()
    restored = MaskManager(other, select_parameters(other, "all"), 0.2, schedule(), seed=99)
    restored.load_state_dict(state)
    assert all(torch.equal(manager.masks[n], restored.masks[n]) for n in manager.names)
    assert restored.iteration == 17 and restored.schedule.end_iteration == 30
    assert torch.rand(3, generator=restored._generator).tolist() == torch.rand(3, generator=manager._generator).tolist()
    assert_invariant(restored)


@pytest.mark.parametrize("growth_gradient, expected", [("batch", 2), ("interval", 3)])
def test_interval_growth_ranks_the_gradient_summed_since_the_last_update(growth_gradient, expected):
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(1, 4))
    manager = MaskManager(model, ["w"], 0.5, schedule(update_interval=4, init_update_ratio=0.5, end_iteration=8),
                          growth_gradient=growth_gradient)
    manager.set_mask("w", torch.tensor([[True, True, False, False]]))
    with torch.no_grad():
        model.w.copy_(torch.tensor([[0.9, 0.1, 0.0, 0.0]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    manager.attach(optimizer)
    # The update comes with the fourth step: the batch's gradient favours entry 2, the sum
    # of the four entry 3 (4.0 against 3.5), the first step's alone entry 2.
    for gradient in ([0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.5, 0.0]):
        model.w.grad = torch.tensor([gradient])
        optimizer.step()
    # rho_4 = 0.25, k = 1: the smaller weight (0.1) is pruned, and one inactive entry grown
    assert manager.masks["w"].tolist()[0] == [True, False, expected == 2, expected == 3]
    assert manager._accumulated == {}  # the sum restarts after an update
    with pytest.raises(ValueError, match="unknown growth gradient"):
        MaskManager(model, ["w"], 0.5, schedule(), growth_gradient="epoch")


def momentum_growth_manager(update_interval: int):
    """One row of four, the first two entries active (0.9 and 0.1): the update at
    ``update_interval`` prunes the 0.1 and grows one inactive entry."""
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(1, 4))
    manager = MaskManager(model, ["w"], 0.5, schedule(update_interval=update_interval, init_update_ratio=0.5,
                                                      end_iteration=2 * update_interval), growth_gradient="momentum")
    manager.set_mask("w", torch.tensor([[True, True, False, False]]))
    with torch.no_grad():
        model.w.copy_(torch.tensor([[0.9, 0.1, 0.0, 0.0]]))
    return model, manager


@pytest.mark.parametrize("optimizer_class, kwargs", [(torch.optim.Adam, {}), (torch.optim.SGD, {"momentum": 0.9})])
def test_momentum_growth_ranks_the_optimizers_running_average(optimizer_class, kwargs):
    # Entry 2 had a large gradient two steps before the update, entry 3 a small one at it:
    # the batch's gradient grows 3, the optimizer's first moment remembers 2.
    model, manager = momentum_growth_manager(update_interval=3)
    optimizer = optimizer_class(model.parameters(), lr=1e-6, **kwargs)
    manager.attach(optimizer)
    for gradient in ([0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]):
        model.w.grad = torch.tensor([gradient])
        optimizer.step()
    assert manager.masks["w"].tolist()[0] == [True, False, True, False]
    assert manager._accumulated == {}  # no buffer of the manager's own
    state = optimizer.state[model.w]
    moment = state["exp_avg"] if "exp_avg" in state else state["momentum_buffer"]
    assert moment[0, 2] == 0 and moment[0, 1] == 0  # the grown and the pruned entry start afresh


def test_momentum_growth_falls_back_to_the_batch_gradient():
    model, manager = momentum_growth_manager(update_interval=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # no momentum: no running average
    manager.attach(optimizer)
    for gradient in ([0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 1.0]):
        model.w.grad = torch.tensor([gradient])
        optimizer.step()
    assert manager.masks["w"].tolist()[0] == [True, False, False, True]


def test_shared_budget_across_optimizers_ranks_each_tensors_own_last_gradient(monkeypatch):
    # Two optimizers (as RecVAE's encoder and decoder): an update fired by one must not rank
    # the other's tensors by a .grad that only the other optimizer zeroes.
    from recbole_dsl.sparse import masking

    torch.manual_seed(3)
    model = TwoTower()
    manager = MaskManager(model, ["user.weight", "item.weight"], 0.2, schedule(update_interval=3, end_iteration=100),
                          shared_budget=True)
    first = torch.optim.Adam([model.user.weight], lr=0.01)
    second = torch.optim.Adam([model.item.weight, *model.proj.parameters(), *model.norm.parameters()], lr=0.01)
    manager.attach(first)
    manager.attach(second)
    ranked = []
    grow = masking.grow
    monkeypatch.setattr(masking, "grow", lambda scores, *args: ranked.append(scores.clone()) or grow(scores, *args))
    item_gradient_at_its_step = None
    for step in range(2):
        users, items = torch.randint(0, 50, (64,)), torch.randint(0, 70, (64,))
        first.zero_grad()  # leaves item.weight.grad to add up
        model(users, items).pow(2).mean().backward()
        first.step()  # iterations 1 and 3: the update fires in the second round's first step
        if step == 1:
            break
        second.zero_grad()
        model(users, items).pow(2).mean().backward()
        item_gradient_at_its_step = model.item.weight.grad.clone()
        second.step()
    assert len(ranked) == 1
    item_scores = ranked[0][model.user.weight.numel():].view_as(model.item.weight)
    expected = item_gradient_at_its_step.abs()
    has_gradient = expected > 0
    assert has_gradient.any()
    assert torch.equal(item_scores[has_gradient], expected[has_gradient])
    assert_invariant(manager)


def test_interval_gradients_are_held_until_the_last_update_only():
    torch.manual_seed(5)
    model = TwoTower()
    names = select_parameters(model, "all")
    manager = MaskManager(model, names, 0.2, schedule(update_interval=3, end_iteration=6), growth_gradient="interval")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    manager.attach(optimizer)
    mask_and_multiplier = {n: manager.masks[n].numel() * 5 for n in names}  # bool mask + fp32 multiplier
    for step in range(1, 10):
        optimizer.zero_grad()
        model(torch.randint(0, 50, (16,)), torch.randint(0, 70, (16,))).sum().backward()
        optimizer.step()
        held = manager.held_bytes()
        if step in (4, 5):  # summing towards the update at 6
            assert all(held[n] == mask_and_multiplier[n] + manager.masks[n].numel() * 4 for n in names)
        if step >= 7:  # T_end has passed
            assert held == mask_and_multiplier
