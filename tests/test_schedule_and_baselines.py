"""The schedule fits the run (T_end in epochs, early stopping only after it) and the
equal-budget dense baseline (dense_small) has as many parameters as the sparse budget."""

import json

import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import get_model, init_seed

from recbole_dsl.methods import METHODS
from recbole_dsl.model_size import fit_dense_small, sparse_nonzeros, trainable_params
from recbole_dsl.quick_start import load_config, run_recbole_dsl
from recbole_dsl.sparse import round_budget
from recbole_dsl.sparse.prune_grow import prefix_lengths, prefix_mask
from recbole_dsl.trainer import create_trainer


def build(tiny_data_path, tmp_path, model="BPR", **overrides):
    config = load_config(
        model, "tiny",
        config_dict={
            "data_path": tiny_data_path, "show_progress": False, "state": "ERROR",
            "checkpoint_dir": str(tmp_path / "saved"), **overrides,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    return config, train_data, valid_data


def worsening_validation(monkeypatch):
    """Every validation scores lower than the one before: only early stopping ends a run."""
    scores = iter(range(1000, 0, -1))
    monkeypatch.setattr(Trainer, "_valid_epoch", lambda self, data, show_progress=False: (next(scores) / 1000, {}))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dsl", "dsl_prefix", "set"])
def test_early_stopping_counts_only_after_mask_exploration_ends(tiny_data_path, tmp_path, monkeypatch, method):
    worsening_validation(monkeypatch)
    config, train_data, valid_data = build(
        tiny_data_path, tmp_path, dsl_method=method, epochs=50, update_epochs=4, stopping_step=1, update_interval=2,
    )
    trainer = create_trainer(config, get_model("BPR")(config, train_data._dataset))
    updates = []
    trainer.mask_manager.on_update = updates.append
    trainer.fit(train_data, valid_data, saved=False)
    steps = len(train_data)
    assert trainer.mask_manager.schedule.end_iteration == 4 * steps  # T_end: update_epochs of iterations
    assert updates and max(u.iteration for u in updates) <= 4 * steps
    # 4 epochs of exploration, then RecBole's rule: stop after stopping_step + 1 validations
    # without improvement, the first of them the one that follows the end of exploration.
    assert len(trainer.train_loss_dict) == 4 + 1


@pytest.mark.slow
def test_a_static_mask_stops_early_at_once(tiny_data_path, tmp_path, monkeypatch):
    worsening_validation(monkeypatch)
    config, train_data, valid_data = build(tiny_data_path, tmp_path, dsl_method="rp", epochs=50, update_epochs=4, stopping_step=1)
    trainer = create_trainer(config, get_model("BPR")(config, train_data._dataset))
    trainer.fit(train_data, valid_data, saved=False)
    assert len(trainer.train_loss_dict) == 3  # the best at epoch 0, two worse validations


def test_t_end_is_update_end_of_the_epochs_when_sooner(tiny_data_path, tmp_path):
    config, train_data, _ = build(tiny_data_path, tmp_path, epochs=10, update_end=0.2, update_epochs=30)
    trainer = create_trainer(config, get_model("BPR")(config, train_data._dataset))
    trainer._train_epoch(train_data, 0)
    assert trainer.mask_manager.schedule.end_iteration == 2 * len(train_data)


@pytest.mark.parametrize("value", [0, -3, 2.5, "ten", True])
def test_update_epochs_is_checked(tiny_data_path, value):
    from recbole_dsl.errors import DSLConfigError

    with pytest.raises(DSLConfigError, match=r"invalid update_epochs=.*: expected an integer >= 1"):
        load_config("BPR", "tiny", config_dict={"data_path": tiny_data_path, "update_epochs": value})


# ---------------------------------------------------------------- dense_small
@pytest.mark.parametrize("model, sparsity", [("BPR", 0.8), ("BPR", 0.9), ("LightGCN", 0.9), ("NeuMF", 0.8),
                                             ("MultiVAE", 0.9), ("MultiVAE", 0.8), ("SASRec", 0.8)])
def test_dense_small_matches_the_sparse_budget(tiny_data_path, tmp_path, model, sparsity):
    extra = {"load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}} if model == "SASRec" else {}
    config, train_data, _ = build(tiny_data_path, tmp_path, model=model, dsl_method="dense_small", sparsity=sparsity, **extra)
    model_class = get_model(model)
    full = model_class(config, train_data._dataset)
    names = [n for n, p in full.named_parameters() if p.requires_grad and p.dim() >= 2]
    expected_budget = sum(round_budget(1 - sparsity, full.get_parameter(n).numel()) for n in names) + sum(
        p.numel() for n, p in full.named_parameters() if p.requires_grad and n not in names
    )
    assert sparse_nonzeros(full, config) == expected_budget

    fitted = fit_dense_small(config, lambda: model_class(config, train_data._dataset))
    small = model_class(config, train_data._dataset)
    assert fitted["budget"] == expected_budget and fitted["params"] == trainable_params(small)
    assert trainable_params(small) < trainable_params(full)
    assert all(config[k] == v for k, v in fitted["sizes"].items())
    if model in ("BPR", "LightGCN"):  # one size: no other embedding size is nearer the budget
        rows = full.n_users + full.n_items
        best = min(range(1, 65), key=lambda e: abs(rows * e - expected_budget))
        assert fitted["sizes"] == {"embedding_size": best}
    else:
        assert abs(fitted["params"] - expected_budget) <= 0.05 * expected_budget


@pytest.mark.slow
def test_dense_small_run_reports_its_sizes_and_trains_dense(tiny_data_path, tmp_path):
    results = tmp_path / "small.json"
    result = run_recbole_dsl(
        "BPR", "tiny",
        config_dict={"data_path": tiny_data_path, "dsl_method": "dense_small", "sparsity": 0.8, "epochs": 2,
                     "show_progress": False, "state": "ERROR", "checkpoint_dir": str(tmp_path / "saved"),
                     "results_file": str(results)},
    )
    saved = json.loads(results.read_text())
    assert saved["dense_small"] == result["dense_small"]
    size = result["dense_small"]["sizes"]["embedding_size"]
    assert result["dsl"]["sparsity"] == 0.8 and result["final_density"] == 1.0
    assert all(entry["numel"] == entry["nnz"] and entry["numel"] % size == 0 for entry in result["sparsified"].values())
    assert result["costs"]["params"] == result["dense_small"]["params"] == result["costs"]["nonzero_params"]
    assert len(result["valid_scores"]) == 2 and all(len(pair) == 2 for pair in result["valid_scores"])


@pytest.mark.slow
def test_dsl_prefix_keeps_embedding_rows_prefixes_in_a_run(tiny_data_path, tmp_path):
    config, train_data, valid_data = build(tiny_data_path, tmp_path, dsl_method="dsl_prefix", sparsity=0.8, epochs=3,
                                           update_interval=2)
    trainer = create_trainer(config, get_model("BPR")(config, train_data._dataset))
    initial = {n: prefix_lengths(m).clone() for n, m in trainer.mask_manager.masks.items()}
    assert all(int(lengths.max() - lengths.min()) <= 1 for lengths in initial.values())  # the dense_small layout
    trainer.fit(train_data, valid_data, saved=False)
    for name, mask in trainer.mask_manager.masks.items():
        weight = trainer.model.get_parameter(name)
        assert trainer.mask_manager.structures[name] == "prefix"
        assert torch.equal(mask, prefix_mask(prefix_lengths(mask), mask.shape[1]))
        assert int(mask.sum()) == round_budget(0.2, mask.numel()) and torch.all(weight[~mask] == 0)
        assert not torch.equal(prefix_lengths(mask), initial[name])  # lengths moved between rows


def test_every_method_is_a_valid_dsl_method(tiny_data_path):
    for name in METHODS:
        sparsity = {} if name == "dense" else {"sparsity": 0.5}
        assert load_config("BPR", "tiny", config_dict={"data_path": tiny_data_path, "dsl_method": name, **sparsity})["dsl_method"] == name


@pytest.mark.parametrize("key", ["regrown_keep_values", "fused_optimizer", "scale_sparse_init"])
@pytest.mark.parametrize("value", [1, "yes", 0.5])
def test_switches_are_checked(tiny_data_path, key, value):
    from recbole_dsl.errors import DSLConfigError

    with pytest.raises(DSLConfigError, match=rf"invalid {key}=.*: expected True or False"):
        load_config("BPR", "tiny", config_dict={"data_path": tiny_data_path, key: value})


def test_growth_gradient_is_checked(tiny_data_path):
    from recbole_dsl.errors import DSLConfigError

    with pytest.raises(DSLConfigError, match=r"invalid growth_gradient='epoch': expected batch, interval or momentum \(or ~ for the method's own\)"):
        load_config("BPR", "tiny", config_dict={"data_path": tiny_data_path, "growth_gradient": "epoch"})


def test_prefix_growth_is_checked_and_reaches_the_manager(tiny_data_path, tmp_path):
    from recbole_dsl.errors import DSLConfigError

    with pytest.raises(DSLConfigError, match=r"invalid prefix_growth='column': expected entry or row"):
        load_config("BPR", "tiny", config_dict={"data_path": tiny_data_path, "prefix_growth": "column"})
    config, train_data, _ = build(tiny_data_path, tmp_path, dsl_method="dsl_mixed", sparsity=0.8, prefix_growth="row")
    assert create_trainer(config, get_model("BPR")(config, train_data._dataset)).mask_manager.prefix_growth == "row"


@pytest.mark.parametrize("selection, prefix", [
    ("embeddings", {"user_mf_embedding.weight", "item_mf_embedding.weight", "user_mlp_embedding.weight", "item_mlp_embedding.weight"}),
    (["_mf_"], {"user_mf_embedding.weight", "item_mf_embedding.weight"}),
    ([], set()),
])
def test_prefix_params_choose_the_tables_with_prefix_rows(tiny_data_path, tmp_path, selection, prefix):
    config, train_data, _ = build(tiny_data_path, tmp_path, model="NeuMF", dsl_method="dsl_mixed", sparsity=0.8, prefix_params=selection)
    manager = create_trainer(config, get_model("NeuMF")(config, train_data._dataset)).mask_manager
    assert {n for n, structure in manager.structures.items() if structure == "prefix"} == prefix
    for name, mask in manager.masks.items():
        assert int(mask.sum()) == manager.budgets[name]
        if name in prefix:  # every row active on a prefix of its columns
            assert torch.equal(mask, prefix_mask(prefix_lengths(mask), mask.shape[1]))
    unstructured = [manager.masks[n] for n in manager.names if n not in prefix and "embedding" in n]
    assert all(not torch.equal(m, prefix_mask(prefix_lengths(m), m.shape[1])) for m in unstructured)


def test_prefix_params_are_checked(tiny_data_path, tmp_path):
    from recbole_dsl.errors import DSLConfigError

    for value, message in (("tables", r"invalid prefix_params='tables': expected embeddings or a list of name patterns"),
                           (["("], r"invalid prefix_params pattern '\('")):
        with pytest.raises(DSLConfigError, match=message):
            load_config("BPR", "tiny", config_dict={"data_path": tiny_data_path, "prefix_params": value})
    config, train_data, _ = build(tiny_data_path, tmp_path, dsl_method="dsl_mixed", sparsity=0.8, prefix_params=["mlp"])
    with pytest.raises(DSLConfigError, match=r"prefix_params=\['mlp'\] selects none of BPR's sparsified embedding tables "
                       r"\(user_embedding.weight, item_embedding.weight\)"):
        create_trainer(config, get_model("BPR")(config, train_data._dataset))


@pytest.mark.parametrize("method, setting, expected", [
    ("dsl", None, "batch"), ("dsl_prefix", None, "batch"), ("dsl_mixed", None, "interval"),
    ("dsl", "interval", "interval"), ("dsl_mixed", "batch", "batch"), ("dsl_interval", None, "interval"),
    ("dsl_momentum", None, "momentum"), ("dsl", "momentum", "momentum"),
])
def test_growth_gradient_is_the_methods_unless_set(tiny_data_path, tmp_path, method, setting, expected):
    overrides = {"growth_gradient": setting} if setting else {}
    config, train_data, _ = build(tiny_data_path, tmp_path, dsl_method=method, sparsity=0.8, **overrides)
    trainer = create_trainer(config, get_model("BPR")(config, train_data._dataset))
    assert trainer.mask_manager.growth_gradient == expected
    assert set(trainer.mask_manager.structures.values()) == {"unstructured" if method in ("dsl", "dsl_interval") else "prefix"}


def test_scaled_sizes_keep_their_multiples():
    from recbole_dsl.model_size import scaled_sizes

    config = {"n_heads": 4}
    for factor in (0.05, 0.2, 0.33, 0.5, 0.77):
        sizes = scaled_sizes(config, {"latent_dimension": 128, "hidden_size": 64, "inner_size": 256}, factor)
        assert sizes["latent_dimension"] % 2 == 0 and sizes["hidden_size"] % 4 == 0
        assert sizes["inner_size"] == max(1, round(256 * factor))


@pytest.mark.parametrize("method, setting, expected", [
    ("dsl_mixed", None, "uniform"), ("dsl_erk", None, "erk"), ("dsl_erk", "uniform", "uniform"), ("dsl", "erk", "erk"),
])
def test_sparsity_distribution_is_the_methods_unless_set(tiny_data_path, tmp_path, method, setting, expected):
    overrides = {"sparsity_distribution": setting} if setting else {}
    config, train_data, _ = build(tiny_data_path, tmp_path, model="NeuMF", dsl_method=method, sparsity=0.9, **overrides)
    trainer = create_trainer(config, get_model("NeuMF")(config, train_data._dataset))
    manager = trainer.mask_manager
    numel, budgets = manager.numel(), manager.budgets
    total = sum(numel.values())
    assert sum(budgets.values()) == pytest.approx(0.1 * total, abs=len(numel))
    predict = budgets["predict_layer.weight"] / numel["predict_layer.weight"]
    largest = max(numel, key=numel.get)  # an MLP embedding table
    embedding = budgets[largest] / numel[largest]
    if expected == "uniform":
        assert predict == pytest.approx(0.1, abs=0.01) and embedding == pytest.approx(0.1, abs=0.01)
    else:  # ERK keeps the 16-weight prediction layer dense and thins the largest tables
        assert predict == 1.0 and embedding < 0.095
    assert sum(int(m.sum()) for m in manager.masks.values()) == sum(budgets.values())
