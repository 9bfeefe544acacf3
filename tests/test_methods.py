"""The methods compared at one budget (dense, rp, mp, set, dsl): one trainer, chosen by
``dsl_method``, trained on a slice of ml-100k."""

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import get_model, init_seed
from torch import nn

from recbole_dsl.quick_start import load_config
from recbole_dsl.sparse import CosineUpdateSchedule, MaskManager, round_budget
from recbole_dsl.trainer import create_trainer
from recbole_dsl.errors import DSLCheckpointError, DSLConfigError

SPARSITY = 0.8


def build(tiny_data_path, tmp_path, **overrides):
    if overrides.get("dsl_method") != "dense":
        overrides.setdefault("sparsity", SPARSITY)
    config = load_config(
        "BPR", "tiny",
        config_dict={
            "data_path": tiny_data_path, "show_progress": False, "state": "ERROR",
            "checkpoint_dir": str(tmp_path / "saved"), **overrides,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    model = get_model("BPR")(config, train_data._dataset)
    return create_trainer(config, model), train_data, valid_data


def masks(trainer):
    return {name: mask.clone() for name, mask in trainer.mask_manager.masks.items()}


def assert_exact_budget(trainer, density):
    for name, mask in trainer.mask_manager.masks.items():
        assert int(mask.sum()) == round_budget(density, mask.numel()), name
        assert torch.all(trainer.model.get_parameter(name)[~mask] == 0), name


# ---------------------------------------------------------------- the core's one-shot prune
def test_prune_by_magnitude_keeps_largest_weights_and_resets_optimizer_state():
    module = nn.Module()
    module.w = nn.Parameter(torch.tensor([[0.9, -0.1, 0.4, -0.6], [0.05, 0.3, -0.8, 0.2]]))
    manager = MaskManager(module, ["w"], 0.5, CosineUpdateSchedule(0, 0.5, 0.0, 10), dense_start=True)
    assert manager.masks["w"].all() and manager.budgets == {"w": 4}
    optimizer = torch.optim.Adam(module.parameters(), lr=0.01)
    manager.attach(optimizer)
    module.w.grad = torch.ones(2, 4)
    optimizer.step()  # the dense phase: every weight moves, every entry gets Adam state
    assert torch.all(module.w != 0) and torch.all(optimizer.state[module.w]["exp_avg"] != 0)

    assert manager.prune_by_magnitude() == 4
    # after the step |w| is 0.89 0.11 0.39 0.61 / 0.04 0.29 0.81 0.19: the four largest stay
    assert manager.masks["w"].tolist() == [[True, False, True, True], [False, False, True, False]]
    assert manager.nnz() == {"w": 4}
    assert torch.all(module.w[~manager.masks["w"]] == 0)
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.all(optimizer.state[module.w][key][~manager.masks["w"]] == 0)
        assert torch.all(optimizer.state[module.w][key][manager.masks["w"]] != 0)
    assert manager.prune_by_magnitude() == 0  # already at the budget


def test_prune_by_magnitude_ranks_a_shared_budget_across_tensors():
    module = nn.Module()
    module.a = nn.Parameter(torch.full((10,), 0.01))
    module.b = nn.Parameter(torch.full((10,), 5.0))
    manager = MaskManager(module, ["a", "b"], 0.5, CosineUpdateSchedule(0, 0.5), shared_budget=True, dense_start=True)
    assert manager.prune_by_magnitude() == 10
    assert manager.nnz() == {"a": 0, "b": 10}


# ---------------------------------------------------------------- configuration
def test_method_settings_are_checked(tiny_data_path):
    def config(**overrides):
        return load_config("BPR", "tiny", config_dict={"data_path": tiny_data_path, **overrides})

    assert config(dsl_method="dense")["sparsity"] == 0.0  # the default 0.9 does not apply
    with pytest.raises(DSLConfigError, match=r"invalid sparsity=0.5 with dsl_method=dense"):
        config(dsl_method="dense", sparsity=0.5)
    with pytest.raises(DSLConfigError, match=r"invalid update_interval=0: .*use dsl_method=rp"):
        config(update_interval=0)
    with pytest.raises(DSLConfigError, match=r"invalid dsl_method='RigL': expected dsl, set, rp, mp, mp_best, dense, dense_small, dsl_interval, dsl_prefix, dsl_mixed, dsl_erk or dsl_momentum"):
        config(dsl_method="RigL")
    with pytest.raises(DSLConfigError, match=r"invalid prune_epoch_fraction=0"):
        config(dsl_method="mp", prune_epoch_fraction=0)
    # 10 epochs, pruned after round(0.75 * 10) = 8, validated after epochs 3, 6 and 9: fine.
    assert config(dsl_method="mp", epochs=10, eval_step=3, prune_epoch_fraction=0.75)["dsl_method"] == "mp"
    with pytest.raises(DSLConfigError, match=r"prunes after epoch 10 of 10 but validates last after epoch 9"):
        config(dsl_method="mp", epochs=10, eval_step=3, prune_epoch_fraction=0.96)


def test_scale_sparse_init_rescales_the_layers_of_a_sparse_start_only(tiny_data_path, tmp_path):
    def initial_weights(method, **overrides):
        config = load_config(
            "NeuMF", "tiny",
            config_dict={
                "data_path": tiny_data_path, "state": "ERROR", "checkpoint_dir": str(tmp_path / "saved"),
                "dsl_method": method, "sparsity": SPARSITY, **overrides,
            },
        )
        init_seed(config["seed"], config["reproducibility"])
        train_data, _, _ = data_preparation(config, create_dataset(config))
        return create_trainer(config, get_model("NeuMF")(config, train_data._dataset))

    def weights(trainer):
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    plain_trainer, scaled_trainer = initial_weights("dsl"), initial_weights("dsl", scale_sparse_init=True)
    manager, scaled_manager = plain_trainer.mask_manager, scaled_trainer.mask_manager
    plain, scaled = weights(plain_trainer), weights(scaled_trainer)
    embeddings = {"user_mf_embedding.weight", "item_mf_embedding.weight", "user_mlp_embedding.weight", "item_mlp_embedding.weight"}
    assert set(manager.names) - set(scaled_manager.scaled_init_names) == embeddings
    for name in manager.names:
        mask = manager.masks[name]
        assert torch.equal(mask, scaled_manager.masks[name]), name  # the same masks, other values
        if name in embeddings:
            assert torch.equal(scaled[name], plain[name]), name
        else:
            factor = (mask[0].numel() / mask.sum(dim=1).clamp(min=1)).sqrt().unsqueeze(1)
            assert torch.allclose(scaled[name], plain[name] * factor), name
            assert not torch.equal(scaled[name], plain[name]), name
    assert_exact_budget(scaled_trainer, 1 - SPARSITY)
    for method in ("mp_best", "dense_small"):  # a dense model keeps its dense initialization
        plain_trainer, scaled_trainer = initial_weights(method), initial_weights(method, scale_sparse_init=True)
        plain, scaled = weights(plain_trainer), weights(scaled_trainer)
        assert scaled_trainer.mask_manager.scaled_init_names == []
        assert all(torch.equal(scaled[n], plain[n]) for n in plain)


# ---------------------------------------------------------------- each method trained
@pytest.mark.slow
def test_dense_trains_every_weight(tiny_data_path, tmp_path):
    trainer, train_data, valid_data = build(tiny_data_path, tmp_path, dsl_method="dense", epochs=2)
    trainer.fit(train_data, valid_data, saved=False)
    assert trainer.mask_manager.is_dense and trainer.mask_manager.overall_density() == 1.0
    for name in trainer.mask_manager.names:
        assert torch.all(trainer.model.get_parameter(name) != 0), name
    assert trainer.dense_iterations == 0


@pytest.mark.slow
def test_rp_set_and_dsl_keep_the_budget_and_differ_only_in_exploration(tiny_data_path, tmp_path):
    trained = {}
    for method in ("rp", "set", "dsl"):
        trainer, train_data, valid_data = build(tiny_data_path, tmp_path, dsl_method=method, epochs=2, update_interval=1)
        initial = masks(trainer)
        trainer.fit(train_data, valid_data, saved=False)
        assert_exact_budget(trainer, 1 - SPARSITY)
        assert trainer.mask_manager.iteration == 2 * len(train_data) and trainer.dense_iterations == 0
        trained[method] = (initial, masks(trainer), trainer.mask_manager.growth)

    names = list(trained["dsl"][0])
    for name in names:  # the same seed draws the same initial mask for every method
        assert torch.equal(trained["rp"][0][name], trained["dsl"][0][name])
        assert torch.equal(trained["set"][0][name], trained["dsl"][0][name])
    assert all(torch.equal(trained["rp"][0][n], trained["rp"][1][n]) for n in names)  # rp never explores
    assert not all(torch.equal(trained["dsl"][0][n], trained["dsl"][1][n]) for n in names)
    assert not all(torch.equal(trained["set"][0][n], trained["set"][1][n]) for n in names)
    assert not all(torch.equal(trained["set"][1][n], trained["dsl"][1][n]) for n in names)
    assert trained["set"][2] == "random" and trained["dsl"][2] == "gradient"


@pytest.mark.slow
def test_mp_trains_dense_then_prunes_once_and_keeps_the_mask(tiny_data_path, tmp_path):
    trainer, train_data, valid_data = build(tiny_data_path, tmp_path, dsl_method="mp", epochs=4, prune_epoch_fraction=0.5)
    batches = len(train_data)
    seen = []

    def record(epoch_idx, valid_score):
        nonzero = {n: int((trainer.model.get_parameter(n) != 0).sum()) for n in trainer.mask_manager.names}
        seen.append((epoch_idx, masks(trainer), nonzero, trainer.dense_iterations))

    trainer.fit(train_data, valid_data, saved=True, callback_fn=record)
    assert [epoch for epoch, *_ in seen] == [0, 1, 2, 3]
    _, dense_masks, dense_nonzero, dense_iterations = seen[0]
    for name, mask in dense_masks.items():  # epoch 0: every weight active and trained
        assert mask.all() and dense_nonzero[name] == mask.numel()
    assert dense_iterations == 0
    pruned_masks = seen[1][1]
    for epoch, epoch_masks, nonzero, iterations in seen[1:]:  # pruned after epoch 1, then fixed
        assert iterations == 2 * batches
        for name, mask in epoch_masks.items():
            assert torch.equal(mask, pruned_masks[name]), (epoch, name)
            assert nonzero[name] == round_budget(1 - SPARSITY, mask.numel())
    assert_exact_budget(trainer, 1 - SPARSITY)  # Adam's momentum never revives a pruned weight

    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert checkpoint["epoch"] >= 1 and checkpoint["pruned"] and checkpoint["dense_iterations"] == 2 * batches
    for name, mask in checkpoint["sparsity"]["masks"].items():
        assert torch.equal(mask, pruned_masks[name])
        assert torch.all(checkpoint["state_dict"][name][~mask] == 0)


@pytest.mark.slow
def test_mp_early_stopping_cannot_end_the_dense_phase(tiny_data_path, tmp_path, monkeypatch):
    scores = iter([0.6, 0.5, 0.4, 0.3, 0.2, 0.1])

    def falling_validation(self, valid_data, show_progress=False):
        score = next(scores)
        return score, {"mrr@10": score}

    monkeypatch.setattr(Trainer, "_valid_epoch", falling_validation)
    trainer, train_data, valid_data = build(
        tiny_data_path, tmp_path, dsl_method="mp", epochs=6, prune_epoch_fraction=0.5, stopping_step=0
    )
    best_score, best_result = trainer.fit(train_data, valid_data, saved=True)
    # Epochs 0-2 dense (0.6, 0.5 must not stop it), pruned after epoch 2 (0.4 is the first
    # sparse score), stopped after epoch 3 (0.3 is worse, stopping_step 0).
    assert sorted(trainer.train_loss_dict) == [0, 1, 2, 3]
    assert best_score == 0.4 and best_result == {"mrr@10": 0.4}
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert checkpoint["epoch"] == 2 and checkpoint["pruned"]
    for name, mask in checkpoint["sparsity"]["masks"].items():
        assert int(mask.sum()) == round_budget(1 - SPARSITY, mask.numel())


def scripted_validation(monkeypatch, scores):
    """RecBole's validation replaced by ``scores`` in turn; returns the weights and the
    optimizer state each validation saw."""
    scores, seen = iter(scores), []

    def validate(self, valid_data, show_progress=False):
        weights = {n: self.model.get_parameter(n).detach().clone() for n in self.mask_manager.names}
        seen.append((weights, sum(len(o.state) for o in self.mask_manager.optimizers)))
        score = next(scores)
        return score, {"mrr@10": score}

    monkeypatch.setattr(Trainer, "_valid_epoch", validate)
    return seen


def assert_magnitude_pruned(trainer, dense_weights):
    """The model holds ``dense_weights`` pruned to the budget by magnitude: the largest
    entries of each tensor, at their dense values, and zeros elsewhere."""
    for name, dense in dense_weights.items():
        mask = trainer.mask_manager.masks[name]
        budget = round_budget(1 - SPARSITY, mask.numel())
        assert int(mask.sum()) == budget
        assert dense.abs()[mask].min() >= dense.abs()[~mask].max(), name
        weight = trainer.model.get_parameter(name).detach()
        assert torch.equal(weight[mask], dense[mask]) and torch.all(weight[~mask] == 0), name


@pytest.mark.slow
def test_mp_best_prunes_the_best_dense_model_when_validation_plateaus(tiny_data_path, tmp_path, monkeypatch):
    # Dense: 0.3, 0.5 (best, epoch 1), 0.4, 0.35: early stopping (stopping_step 1) would end
    # the run after epoch 3, where mp_best prunes epoch 1's model and validates it (0.2).
    # Fine-tuning: 0.25 (best, epoch 4), 0.1, 0.05: stopped after epoch 6.
    seen = scripted_validation(monkeypatch, [0.3, 0.5, 0.4, 0.35, 0.2, 0.25, 0.1, 0.05])
    trainer, train_data, valid_data = build(
        tiny_data_path, tmp_path, dsl_method="mp_best", epochs=20, prune_epoch_fraction=0.9, stopping_step=1
    )
    best_score, _ = trainer.fit(train_data, valid_data, saved=True)
    assert sorted(trainer.train_loss_dict) == [0, 1, 2, 3, 4, 5, 6]
    assert best_score == 0.25 and trainer.dense_iterations == 4 * len(train_data)
    (best_dense, _), (pruned, optimizer_states) = seen[1], seen[4]
    assert optimizer_states == 0  # fine-tuning starts with fresh optimizer state
    for name, weight in seen[3][0].items():
        assert not torch.equal(weight, best_dense[name])  # two more epochs moved the dense model
    trainer.model.load_state_dict({**trainer.model.state_dict(), **pruned})
    assert_magnitude_pruned(trainer, best_dense)
    assert [pair[1] for pair in trainer.valid_scores] == [0.3, 0.5, 0.4, 0.35, 0.2, 0.25, 0.1, 0.05]
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    assert checkpoint["epoch"] == 4 and checkpoint["pruned"]


@pytest.mark.slow
def test_mp_best_prunes_the_best_dense_model_at_the_latest_epoch(tiny_data_path, tmp_path, monkeypatch):
    # No plateau before round(0.5 * 4) = 2 dense epochs: epoch 0's model (0.5) is pruned after epoch 1.
    seen = scripted_validation(monkeypatch, [0.5, 0.4, 0.3, 0.2])
    trainer, train_data, valid_data = build(
        tiny_data_path, tmp_path, dsl_method="mp_best", epochs=4, prune_epoch_fraction=0.5, stopping_step=5
    )
    trainer.fit(train_data, valid_data, saved=True)
    assert trainer.dense_iterations == 2 * len(train_data)
    (best_dense, _), (pruned, optimizer_states) = seen[0], seen[1]
    assert optimizer_states == 0
    trainer.model.load_state_dict({**trainer.model.state_dict(), **pruned})
    assert_magnitude_pruned(trainer, best_dense)


@pytest.mark.slow
def test_mp_resumes_in_either_phase(tiny_data_path, tmp_path):
    settings = dict(dsl_method="mp", epochs=4, prune_epoch_fraction=0.5, eval_step=0)
    first, train_data, _ = build(tiny_data_path, tmp_path, **settings)
    first._train_epoch(train_data, 0)
    first._save_checkpoint(0)
    dense_checkpoint = first.saved_model_file

    second, train_data, _ = build(tiny_data_path, tmp_path, **settings)
    second.resume_checkpoint(dense_checkpoint)
    assert all(mask.all() for mask in second.mask_manager.masks.values()) and second.dense_iterations == 0
    second._train_epoch(train_data, 1)  # the second dense epoch ends with the prune
    assert second.dense_iterations == 2 * len(train_data)
    assert_exact_budget(second, 1 - SPARSITY)
    second.saved_model_file = str(tmp_path / "pruned.pth")
    second._save_checkpoint(1)

    third, train_data, _ = build(tiny_data_path, tmp_path, **settings)
    third.resume_checkpoint(second.saved_model_file)
    assert third.dense_iterations == second.dense_iterations
    third._train_epoch(train_data, 2)  # fine-tuning: no second prune, the mask stays
    assert third.dense_iterations == second.dense_iterations
    for name in third.mask_manager.names:
        assert torch.equal(third.mask_manager.masks[name], second.mask_manager.masks[name])
    assert_exact_budget(third, 1 - SPARSITY)


def test_checkpoint_of_another_method_is_refused(tiny_data_path, tmp_path):
    dsl, _, _ = build(tiny_data_path, tmp_path, dsl_method="dsl")
    dsl._save_checkpoint(0)
    mp, _, _ = build(tiny_data_path, tmp_path, dsl_method="mp")
    with pytest.raises(DSLCheckpointError, match="was trained with dsl_method=dsl, not mp"):
        mp.resume_checkpoint(dsl.saved_model_file)
