"""The DSL trainer inside RecBole: resume, best-model reload, caches, checkpoints."""

import logging
import math
import re

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, init_seed

from recbole_dsl.quick_start import load_config
from recbole_dsl.trainer import create_trainer
from recbole_dsl.errors import DSLCheckpointError


def build(model_name, tmp_path, **overrides):
    config = load_config(
        model_name, "ml-100k",
        config_dict={"show_progress": False, "state": "ERROR", "checkpoint_dir": str(tmp_path / "saved"), **overrides},
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(model_name)(config, train_data._dataset)
    return create_trainer(config, model), train_data, valid_data, test_data


def updates_logged(text):
    return [(int(i), float(r)) for i, r in re.findall(r"DSL mask update \[iteration (\d+), rho_t ([0-9.]+)", text)]


@pytest.mark.slow
@pytest.mark.parametrize("storage", [{}, {"dsl_method": "dsl", "sparse_storage": True}], ids=["masks", "packed"])
def test_resume_keeps_masks_optimizer_and_schedule(tmp_path, caplog, storage):
    settings = dict(epochs=4, eval_step=0, update_interval=30, init_update_ratio=0.4, min_update_ratio=0.0, sparsity=0.9, **storage)
    first, train_data, _, _ = build("BPR", tmp_path, **settings)
    first._train_epoch(train_data, 0)
    first._train_epoch(train_data, 1)
    first._save_checkpoint(1)
    assert first.mask_manager.iteration == 80 and first.mask_manager.schedule.end_iteration == 160

    second, train_data, _, _ = build("BPR", tmp_path, **settings)
    second.resume_checkpoint(first.saved_model_file)
    assert second.start_epoch == 2 and second.mask_manager.iteration == 80
    # The cost figures count the whole run: steps, growth updates and epochs before the resume.
    assert (second.optimizer_steps, second.gradient_growth_updates) == (80, 2)
    assert second.epoch_seconds == first.epoch_seconds and len(second.epoch_seconds) == 2
    for name in first.mask_manager.names:
        assert torch.equal(second.mask_manager.masks[name], first.mask_manager.masks[name])
        assert torch.equal(second.model.state_dict()[name], first.model.state_dict()[name])
    first_state = first.optimizer.state_dict()["state"]
    for key, value in second.optimizer.state_dict()["state"].items():
        assert torch.equal(value["exp_avg_sq"], first_state[key]["exp_avg_sq"])

    with caplog.at_level(logging.INFO):
        second.fit(train_data, None, saved=True)
    assert second.mask_manager.iteration == second.optimizer_steps == 160
    assert second.gradient_growth_updates == 5 and len(second.epoch_seconds) == 4
    updates = updates_logged(caplog.text)
    assert [i for i, _ in updates] == [90, 120, 150]
    for iteration, ratio in updates:  # the schedule continues with T_end = 160 from the first run
        assert ratio == pytest.approx(0.4 * (1 + math.cos(math.pi * iteration / 160)) / 2, abs=1e-4)
    for name in second.mask_manager.names:
        assert int(second.mask_manager.masks[name].sum()) == second.mask_manager.budgets[name]


@pytest.mark.slow
def test_best_model_reload_restores_masks_and_clears_caches(tmp_path):
    trainer, train_data, valid_data, test_data = build(
        "LightGCN", tmp_path, epochs=2, sparsity=0.8, update_interval=15, n_layers=1
    )
    trainer.fit(train_data, valid_data, saved=True)
    checkpoint = torch.load(trainer.saved_model_file, weights_only=True)
    saved_masks = checkpoint["sparsity"]["masks"]

    trainer.evaluate(valid_data, load_best_model=False)
    assert trainer.model.restore_user_e is not None  # LightGCN cached its propagation
    trainer.mask_manager.update_masks(0.5)  # masks change outside training
    assert trainer.model.restore_user_e is None and trainer.model.restore_item_e is None
    assert not torch.equal(trainer.mask_manager.masks["user_embedding.weight"], saved_masks["user_embedding.weight"])

    trainer.evaluate(valid_data, load_best_model=False)  # caches the propagation of the changed masks
    result = trainer.evaluate(test_data, load_best_model=True)
    # The same numbers as the best checkpoint tested by a trainer that never saw other masks.
    fresh, _, _, _ = build("LightGCN", tmp_path, epochs=2, sparsity=0.8, update_interval=15, n_layers=1)
    assert fresh.evaluate(test_data, load_best_model=True, model_file=trainer.saved_model_file) == result
    assert result["ndcg@10"] > 0
    for name, mask in saved_masks.items():
        assert torch.equal(trainer.mask_manager.masks[name], mask)
        assert torch.equal(trainer.model.get_parameter(name), checkpoint["state_dict"][name])


def test_checkpoint_of_another_model_is_refused(tmp_path):
    bpr, _, _, _ = build("BPR", tmp_path, sparsity=0.5)
    bpr._save_checkpoint(0)
    lightgcn, _, _, _ = build("LightGCN", tmp_path, sparsity=0.5)
    with pytest.raises(DSLCheckpointError, match="holds a BPR model, not LightGCN"):
        lightgcn.resume_checkpoint(bpr.saved_model_file)


def test_truncated_checkpoint_is_refused(tmp_path):
    trainer, _, _, _ = build("BPR", tmp_path, sparsity=0.5)
    trainer._save_checkpoint(0)
    data = open(trainer.saved_model_file, "rb").read()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DSLCheckpointError, match="corrupt, truncated"):
        trainer.resume_checkpoint(truncated)


@pytest.mark.parametrize("sparsity", [0.0, 0.9])
def test_clip_grad_norm_clips_the_norm_of_the_sparse_model(tmp_path, sparsity):
    # One SGD step per epoch with learning rate 1: the weights move by exactly the clipped
    # gradient of the active entries, whose norm must be max_norm, not max_norm scaled down
    # by the inactive entries' share of the norm (or clipped twice, RecBole's way first).
    max_norm = 1e-4
    trainer, train_data, _, _ = build(
        "BPR", tmp_path, sparsity=sparsity, learner="sgd", learning_rate=1.0, train_batch_size=10**6,
        update_interval=1000, clip_grad_norm={"max_norm": max_norm},
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer._train_epoch(train_data, 0)
    assert trainer.optimizer_steps == 1
    moved = torch.cat([(p.detach() - q).flatten() for p, q in zip(trainer.model.parameters(), before)])
    assert float(moved.norm()) == pytest.approx(max_norm, rel=1e-2)  # clipping divides by the norm + 1e-6
    for name in trainer.mask_manager.names:
        assert int((trainer.model.get_parameter(name) != 0).sum()) == trainer.mask_manager.budgets[name]


@pytest.mark.parametrize("learner, fused", [("adam", True), ("adamw", True), ("sgd", True), ("adagrad", True), ("rmsprop", None)])
def test_optimizers_run_torchs_fused_kernel_where_it_has_one(tmp_path, learner, fused):
    trainer, train_data, _, _ = build("BPR", tmp_path, sparsity=0.9, learner=learner, weight_decay=0.01, update_interval=10)
    assert trainer.optimizer.param_groups[0].get("fused") is fused
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.01
    trainer._train_epoch(train_data, 0)
    assert trainer.gradient_growth_updates > 0
    for name in trainer.mask_manager.names:
        assert int((trainer.model.get_parameter(name) != 0).sum()) == trainer.mask_manager.budgets[name]
    plain, _, _, _ = build("BPR", tmp_path, sparsity=0.9, learner=learner, fused_optimizer=False)
    assert not plain.optimizer.param_groups[0].get("fused")


@pytest.fixture
def one_thread():
    """Torch on one thread: LightGCN's sparse product sums its gradient in another order
    from run to run on several, which can swap two growth candidates of nearly equal score."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dsl", "dsl_mixed"])
@pytest.mark.parametrize("model", ["BPR", "LightGCN"])
def test_packed_tables_train_as_masked_ones_at_a_fifth_of_the_state(model, method, tmp_path, one_thread):
    """sparse_storage: the same masks and metrics as the masked run of the same seed, with
    the tables' training state at most 0.2 of dense at sparsity 0.9 (dsl_mixed: once its
    exploration has ended and the interval's gradient is no longer kept). Adam is the
    single-tensor kernel: the fused one rounds a step differently for the packed values
    than for the dense table, which can swap two growth candidates of nearly equal score.
    (With dsl, weights agree to Adam's step size, not bit for bit: growth candidates of
    exactly equal gradient are taken in another order from the two layouts;
    tests/test_packed.py checks weights.)"""
    runs = []
    for packed in (False, True):
        settings = dict(
            epochs=2, sparsity=0.9, update_interval=10, dsl_method=method, sparse_storage=packed, n_layers=1, fused_optimizer=False
        )
        trainer, train_data, valid_data, test_data = build(model, tmp_path / str(packed), **settings)
        assert [type(trainer.model.get_submodule(n.rpartition(".")[0])).__name__ for n in trainer.mask_manager.names] == (
            ["PackedEmbedding"] * 2 if packed else ["Embedding"] * 2
        )
        trainer.fit(train_data, valid_data, saved=True)
        state = trainer.train_state
        result = trainer.evaluate(test_data, load_best_model=True)
        runs.append((trainer, result, state, torch.load(trainer.saved_model_file, weights_only=True)))
    (masked, masked_result, masked_state, masked_checkpoint), (packed, packed_result, packed_state, packed_checkpoint) = runs
    assert masked.gradient_growth_updates == packed.gradient_growth_updates > 0
    for name, mask in masked_checkpoint["sparsity"]["masks"].items():
        assert torch.equal(packed_checkpoint["sparsity"]["masks"][name], mask), name
        assert torch.all(packed_checkpoint["state_dict"][name][~mask] == 0), name
    assert packed_result == pytest.approx(masked_result, abs=2e-3) and packed_result["ndcg@10"] > 0
    assert packed_state["train_state_bytes_dense"] == masked_state["train_state_bytes_dense"]
    assert packed_state["train_state_bytes"] <= 0.2 * packed_state["train_state_bytes_dense"]
    assert masked_state["train_state_bytes"] > masked_state["train_state_bytes_dense"]
