"""MAC counting on products worked out by hand, the compact format, and the cost figures
of a real run."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, init_seed
from safetensors.torch import save as save_safetensors

from recbole_dsl.quick_start import load_config, run_recbole_dsl
from recbole_dsl.costs.compact import CompactFileError, decode, encode, load_compact, save_compact
from recbole_dsl.costs.macs import MacCounter


def _mask(shape, density, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def _product_count(ma: torch.Tensor, mb: torch.Tensor) -> int:
    """Brute force: multiplications A[i,k]*B[k,j] with both factors active."""
    m, k = ma.shape
    n = mb.shape[1]
    return sum(bool(ma[i, p]) and bool(mb[p, j]) for i, p, j in itertools.product(range(m), range(k), range(n)))


def test_mf_scoring_counts_products_of_active_factors():
    users, items = torch.nn.Parameter(torch.randn(6, 4)), torch.nn.Parameter(torch.randn(5, 4))
    mask_u, mask_i = _mask((6, 4), 0.5, 0), _mask((5, 4), 0.5, 1)
    batch = torch.tensor([0, 3, 5])
    with torch.no_grad(), MacCounter({users: mask_u, items: mask_i}) as counter:
        torch.matmul(F.embedding(batch, users), items.t())
    assert counter.count.forward_dense == 3 * 4 * 5
    assert counter.count.forward == _product_count(mask_u[batch], mask_i.t())
    assert 0 < counter.count.forward < counter.count.forward_dense
    # No gradient is taken under no_grad, though both tables require one.
    assert counter.count.backward == counter.count.backward_dense == counter.count.growth_backward == 0


def test_linear_layer_with_sparse_weight():
    weight, bias = torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.zeros(3))
    mask = _mask((3, 4), 0.5, 2)
    x = torch.randn(8, 4)
    with MacCounter({weight: mask}) as counter:
        F.linear(x, weight, bias)
    count = counter.count
    assert (count.forward_dense, count.forward) == (8 * 12, 8 * int(mask.sum()))
    # Only the weight needs a gradient: one backward product, at active entries only;
    # a gradient-growth step needs the weight's whole gradient.
    assert (count.backward_dense, count.backward, count.growth_backward) == (96, count.forward, 96)

    with MacCounter({weight: mask}) as counter:
        F.linear(x.requires_grad_(), weight, bias)
    assert counter.count.backward == 2 * counter.count.forward


def test_dense_model_counts_equal():
    layer = torch.nn.Linear(4, 3)
    with MacCounter({}) as counter:
        layer(torch.randn(5, 4))
    assert counter.count.forward == counter.count.forward_dense == 5 * 4 * 3


def test_sparse_dense_product_follows_concatenated_embeddings():
    """LightGCN's propagation: a graph times the concatenated user and item tables. The
    first hop skips structural zeros; its output is dense, so the second hop does not."""
    rows, cols = torch.tensor([0, 1, 1, 2, 4, 5]), torch.tensor([1, 2, 0, 5, 5, 3])
    graph = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(6), (6, 6)).coalesce()
    users, items = torch.nn.Parameter(torch.randn(2, 4)), torch.nn.Parameter(torch.randn(4, 4))
    mask_u, mask_i = _mask((2, 4), 0.4, 3), _mask((4, 4), 0.4, 4)
    with MacCounter({users: mask_u, items: mask_i}) as counter:
        first = torch.sparse.mm(graph, torch.cat([users, items]))
        torch.sparse.mm(graph, first)
    active_per_row = torch.cat([mask_u, mask_i]).sum(dim=1)
    assert counter.count.forward_dense == 2 * 6 * 4
    assert counter.count.forward == int(active_per_row[cols].sum()) + 6 * 4


def test_an_uncoalesced_graph_is_counted_as_stored():
    """torch's sparse-dense kernel multiplies the entries as stored, a duplicate twice: the
    count follows it, without coalescing (sorting) the graph at every step."""
    rows, cols = torch.tensor([0, 1, 1, 2, 4, 0]), torch.tensor([1, 2, 0, 5, 5, 1])  # (0, 1) twice
    graph = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(6), (6, 6))
    table = torch.nn.Parameter(torch.randn(6, 4))
    mask = _mask((6, 4), 0.5, 7)
    counts = {}
    for name, matrix in (("stored", graph), ("coalesced", graph.coalesce())):
        with MacCounter({table: mask}) as counter:
            torch.sparse.mm(matrix, table)
        counts[name] = counter.count
    assert not graph.is_coalesced()
    assert counts["stored"].forward_dense == 6 * 4 and counts["coalesced"].forward_dense == 5 * 4
    active = mask.sum(dim=1)
    assert counts["stored"].forward == int(active[cols].sum())
    assert counts["coalesced"].forward == int(active[cols].sum()) - int(active[1])


def test_elementwise_product_of_gathered_rows():
    """BPR's score: the element-wise product of a user's and an item's rows."""
    users, items = torch.nn.Parameter(torch.randn(4, 8)), torch.nn.Parameter(torch.randn(4, 8))
    mask_u, mask_i = _mask((4, 8), 0.5, 5), _mask((4, 8), 0.5, 6)
    u, i = torch.tensor([0, 2, 3]), torch.tensor([1, 1, 2])
    with MacCounter({users: mask_u, items: mask_i}) as counter:
        torch.mul(F.embedding(u, users), F.embedding(i, items)).sum(dim=1)
    assert counter.count.forward_dense == 3 * 8
    assert counter.count.forward == int((mask_u[u] & mask_i[i]).sum())
    assert counter.count.backward == 2 * counter.count.forward


def _neumf_scores(tables, weight, pairs):
    """NeuMF's forward on pairs: a GMF product and an MLP layer over concatenated rows,
    then a layer over both."""
    user_mf, item_mf, user_mlp, item_mlp = tables
    users, items = pairs
    gmf = F.embedding(users, user_mf) * F.embedding(items, item_mf)
    mlp = torch.relu(F.linear(torch.cat((F.embedding(users, user_mlp), F.embedding(items, item_mlp)), -1), weight))
    return F.linear(torch.cat((gmf, mlp), -1), torch.ones(1, 8))


@pytest.mark.parametrize("pairs", ["every pair", "random pairs"])
def test_gathered_rows_count_as_their_rows(pairs):
    """Lookups, their products and concatenations count as the rows they gather, without
    the rows (a full sort's pairs, one user and all items, then random training pairs)."""
    tables = [torch.nn.Parameter(torch.randn(rows, 4)) for rows in (5, 7, 5, 7)]
    weight = torch.nn.Parameter(torch.randn(4, 8))
    masks = [_mask(t.shape, 0.5, seed) for seed, t in enumerate(tables)] + [_mask((4, 8), 0.5, 9)]
    if pairs == "every pair":
        users, items = torch.arange(5).repeat_interleave(7), torch.arange(7).repeat(5)
    else:
        generator = torch.Generator().manual_seed(3)
        users, items = torch.randint(5, (40,), generator=generator), torch.randint(7, (40,), generator=generator)
    with torch.no_grad(), MacCounter(dict(zip([*tables, weight], masks))) as counter:
        _neumf_scores(tables, weight, (users, items))
    mu_mf, mi_mf, mu_mlp, mi_mlp, mw = (m.float() for m in masks)
    gmf = mu_mf[users] * mi_mf[items]
    mlp_input = torch.cat((mu_mlp[users], mi_mlp[items]), -1)
    first_layer = int((mlp_input.sum(0) * mw.t().sum(1)).sum())  # per input column: its rows times its weights
    assert counter.count.forward == int(gmf.sum()) + first_layer + int(gmf.sum()) + len(users) * 4
    assert counter.count.forward_dense == len(users) * (4 + 8 * 4 + 8)


def test_counting_without_values_gives_the_same_figures_and_skips_the_work():
    """With values=False the products are counted and not computed: no product reaches
    the kernels (a mode below the counter sees what it runs)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Kernels(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.products = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.products += func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default) and args[1].device.type != "meta"
            return func(*args, **(kwargs or {}))

    tables = [torch.nn.Parameter(torch.randn(rows, 4)) for rows in (5, 7, 5, 7)]
    weight = torch.nn.Parameter(torch.randn(4, 8))
    masks = dict(zip([*tables, weight], [_mask(t.shape, 0.5, seed) for seed, t in enumerate([*tables, weight])]))
    pairs = torch.arange(5).repeat_interleave(7), torch.arange(7).repeat(5)
    counts = {}
    for values in (True, False):
        with torch.no_grad(), Kernels() as kernels, MacCounter(masks, values=values) as counter:
            scores = _neumf_scores(tables, weight, pairs)
        counts[values] = counter.count, kernels.products
    assert scores.shape == (35, 1)
    assert counts[False][0] == counts[True][0]
    assert (counts[True][1], counts[False][1]) == (2, 0)


def test_counts_stay_exact_past_float32_integers():
    """Masks are followed as float ones and zeros; a count of more than 2**24 of them
    (where float32 stops holding every integer) is still exact."""
    size = 2**24 + 8  # 2**24 + 7 active: odd, so no float32 holds it
    table = torch.nn.Parameter(torch.ones(size, 1))
    mask = torch.ones(size, 1, dtype=torch.bool)
    mask[3] = False
    with torch.no_grad(), MacCounter({table: mask}) as counter:
        table * table
    assert counter.count.forward == size - 1


def test_scaling_and_addition_do_not_count_as_products():
    weight = torch.nn.Parameter(torch.randn(3, 3))
    with MacCounter({weight: _mask((3, 3), 0.5, 7)}) as counter:
        (weight * 2.0 + 1.0).sum()
    assert counter.count.forward_dense == 0


# ---------------------------------------------------------------- compact format
@pytest.mark.parametrize("density", [0.0, 0.002, 0.03, 0.1, 0.5, 0.97, 1.0])
def test_compact_round_trip_and_size_bound(density):
    mask = _mask((500, 64), density, 8)
    state = {"table": torch.randn(500, 64) * mask, "bias": torch.randn(7)}
    data = encode(state, {"table": mask})
    restored = decode(data)
    assert set(restored) == {"table", "bias"}
    assert torch.equal(restored["table"], state["table"]) and torch.equal(restored["bias"], state["bias"])
    header = 8 + int.from_bytes(data[:8], "little")
    payload = len(data) - header
    # (density + 1/32) of the table's fp32 size: 4 bytes per active value, 1 bit per entry.
    assert payload <= int(mask.sum()) * 4 + 500 * 64 // 8 + 7 * 4
    assert header < 1024


def test_compact_file_refuses_damaged_files(tmp_path):
    mask = _mask((50, 8), 0.2, 9)
    path = tmp_path / "model.safetensors"
    save_compact(str(path), {"w": torch.randn(50, 8) * mask}, {"w": mask})
    data = path.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CompactFileError, match="not a valid recbole-dsl compact file"):
        load_compact(str(truncated))
    with pytest.raises(CompactFileError, match="not a valid"):
        decode(b"\x00" * 64)
    with pytest.raises(CompactFileError, match="format None"):
        decode(save_safetensors({"w": torch.zeros(2)}))
    with pytest.raises(CompactFileError, match="cannot read compact file"):
        load_compact(str(tmp_path / "missing.safetensors"))

    tampered = bytearray(data)
    header_size = int.from_bytes(data[:8], "little")
    header = data[8 : 8 + header_size].replace(b'[50, 8]', b'[60, 8]')
    assert len(header) == header_size
    tampered[8 : 8 + header_size] = header
    with pytest.raises(CompactFileError, match="bitmap holds"):
        decode(bytes(tampered))


# ---------------------------------------------------------------- a real run
def _scores(model, dataset, users):
    from recbole.data.interaction import Interaction

    model.eval()
    with torch.no_grad():
        return model.full_sort_predict(Interaction({dataset.uid_field: users}))


def test_run_reports_costs_and_writes_a_compact_model(tiny_data_path):
    settings = {
        "data_path": tiny_data_path, "epochs": 2, "show_progress": False, "sparsity": 0.9,
        "update_interval": 3, "cost_batches": 3, "results_file": "bpr.json",
    }
    result = run_recbole_dsl("BPR", "tiny", config_dict=settings)
    costs = result["costs"]
    assert json.load(open("bpr.json"))["costs"] == costs
    assert costs["inference_macs"] / costs["inference_macs_dense"] <= 0.15
    assert costs["train_macs"] < costs["train_macs_dense"]
    assert costs["param_bytes_compact"] / costs["param_bytes_dense"] <= 0.15
    assert costs["nonzero_params"] == sum(entry["nnz"] for entry in result["sparsified"].values())
    assert costs["optimizer_steps"] > 0 and costs["gradient_growth_updates"] >= 1
    assert costs["epochs_trained"] == 2 and costs["epoch_seconds"] > 0 and costs["peak_rss_bytes"] > 0
    assert costs["test_seconds"] > 0 and costs["inference_count_seconds"] > 0
    assert 0 < costs["mask_update_seconds"] < costs["mask_seconds"] < 2 * costs["epoch_seconds"]
    # Mask mode holds every sparsified tensor densely: fp32 weights, gradients and Adam's two
    # moments (and its step count), plus the boolean mask and its fp32 multiplier.
    numel = [entry["numel"] for entry in result["sparsified"].values()]
    assert costs["train_state_bytes_dense"] == sum(4 * 4 * n + 4 for n in numel)
    assert costs["train_state_bytes"] == costs["train_state_bytes_dense"] + sum(5 * n for n in numel)

    config = load_config("BPR", "tiny", config_dict={"data_path": tiny_data_path})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    trained = get_model("BPR")(config, train_data._dataset)
    trained.load_state_dict(torch.load(result["checkpoint"], weights_only=True)["state_dict"])
    compact = get_model("BPR")(config, train_data._dataset)
    compact.load_state_dict(load_compact(result["compact_file"]))
    users = torch.arange(1, dataset.user_num)
    assert torch.equal(_scores(trained, dataset, users), _scores(compact, dataset, users))
    assert costs["param_bytes_compact"] == len(open(result["compact_file"], "rb").read())


def test_dense_run_costs_equal_their_dense_figures(tiny_data_path):
    settings = {"data_path": tiny_data_path, "epochs": 1, "show_progress": False, "sparsity": 0.0, "cost_batches": 2}
    costs = run_recbole_dsl("LightGCN", "tiny", config_dict=settings, saved=False)["costs"]
    assert costs["inference_macs"] == costs["inference_macs_dense"] > 0
    assert costs["train_macs"] == costs["train_macs_dense"] > 0
    assert costs["gradient_growth_updates"] == 0


def trained_trainer(model_name, data_path, tmp_path, **settings):
    from recbole_dsl.trainer import create_trainer

    config = load_config(model_name, "tiny", config_dict={
        "data_path": data_path, "show_progress": False, "state": "ERROR", "sparsity": 0.8,
        "checkpoint_dir": str(tmp_path / "saved"), **settings,
    })
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, test_data = data_preparation(config, create_dataset(config))
    trainer = create_trainer(config, get_model(model_name)(config, train_data._dataset))
    trainer._train_epoch(train_data, 0)
    return trainer, test_data


def count_batch_by_batch(trainer, test_data):
    from recbole_dsl.costs.measure import parameter_masks
    from recbole_dsl.trainer import clear_cached_embeddings

    clear_cached_embeddings(trainer.model)
    with MacCounter(parameter_masks(trainer)) as counter:
        trainer.evaluate(test_data, load_best_model=False)
    return counter.count


SEQUENTIAL = {"MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
              "eval_batch_size": 16, "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]}}


@pytest.mark.parametrize("model_name", ["BPR", "LightGCN", "NeuMF", "MultiVAE", "DMF", "SASRec"])
def test_full_sort_counted_on_chunks_equals_the_count_batch_by_batch(tiny_data_path, tmp_path, monkeypatch, model_name):
    from recbole_dsl.costs.measure import count_full_sort_in_chunks, count_inference

    # eval_batch_size 800 scores two of the 400 items' users per batch: 50 batches.
    trainer, test_data = trained_trainer(model_name, tiny_data_path, tmp_path, **(SEQUENTIAL if model_name == "SASRec" else {"eval_batch_size": 800}))
    expected = count_batch_by_batch(trainer, test_data)
    assert expected.forward > 0 and expected.forward < expected.forward_dense
    counters = counters_made(monkeypatch)
    assert count_full_sort_in_chunks(trainer, test_data) == expected  # the chunks are used, and agree
    assert not counters[-1].values  # and were counted on shapes and masks only
    assert count_inference(trainer, test_data) == expected


def counters_made(monkeypatch):
    """The counters the cost measurement makes from now on, in order."""
    from recbole_dsl.costs import measure

    made = []

    def record(*args, **kwargs):
        made.append(MacCounter(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(measure, "MacCounter", record)
    return made


def test_a_count_that_changes_without_values_is_counted_with_them(tiny_data_path, tmp_path, monkeypatch):
    """A model whose work follows its values (here: a product as long as its scores are
    not zero) is counted on its values; outputs left as zeros rather than uninitialised
    make the difference certain."""
    from recbole_dsl.costs import macs
    from recbole_dsl.costs.measure import count_full_sort_in_chunks

    trainer, test_data = trained_trainer("BPR", tiny_data_path, tmp_path, eval_batch_size=800)
    model = trainer.model
    plain = type(model).full_sort_predict

    def with_value_dependent_work(interaction):
        scores = plain(model, interaction)
        rows = int((scores.view(len(interaction), -1) != 0).any(dim=1).sum())  # the batch's users, when scores are computed
        torch.mm(torch.ones(rows, 4), torch.ones(4, 3))
        return scores

    uninitialized = macs._uninitialized_output

    def zeros(func, args, kwargs):
        out = uninitialized(func, args, kwargs)
        return out.zero_() if torch.is_tensor(out) else out

    monkeypatch.setattr(model, "full_sort_predict", with_value_dependent_work)
    monkeypatch.setattr(macs, "_uninitialized_output", zeros)
    expected = count_batch_by_batch(trainer, test_data)
    counters = counters_made(monkeypatch)
    assert count_full_sort_in_chunks(trainer, test_data) == expected
    assert counters[-1].values


def test_work_per_batch_that_does_not_grow_with_its_users_is_counted_batch_by_batch(tiny_data_path, tmp_path, monkeypatch):
    from recbole_dsl.costs.measure import count_full_sort_in_chunks, count_inference

    trainer, test_data = trained_trainer("BPR", tiny_data_path, tmp_path, eval_batch_size=800)
    model = trainer.model
    plain = type(model).full_sort_predict

    def with_item_work(interaction):  # one pass over the item table per batch, whatever its size
        torch.mm(model.item_embedding.weight, model.item_embedding.weight.t()[:, :1])
        return plain(model, interaction)

    monkeypatch.setattr(model, "full_sort_predict", with_item_work)
    assert count_full_sort_in_chunks(trainer, test_data) is None
    assert count_inference(trainer, test_data) == count_batch_by_batch(trainer, test_data)
