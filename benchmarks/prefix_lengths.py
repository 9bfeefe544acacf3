"""Prefix rows of fixed, popularity-based lengths: does a mixed-dimension embedding laid out
in advance beat the uniform one at the same budget?

    python benchmarks/prefix_lengths.py --sparsity 0.9 --seeds 2020 2021 2022 --exponents 0 0.1 0.3

Mixed-dimension embeddings (Ginart et al., arXiv 1909.11810) give each user and item a
length that grows with its number of interactions. Here a row's length is proportional to
``(count + 1) ** exponent`` (at least 1, at most the embedding size), scaled so that the
lengths add up to the table's budget at ``--sparsity``: exponent 0 is the uniform layout of
dense_small and ``dsl_prefix``'s start. The masks are fixed (``dsl_prefix`` with no mask
update), the counts are the training split's, and every run trains under the ``converged``
profile. Each run's row goes to ``benchmarks/results/prefix-lengths.csv``, the table with
the means and the commands to ``docs/prefix-lengths.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Dict, List

import torch
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, init_seed

from recbole_dsl.quick_start import load_config, recbole_warnings_silenced
from recbole_dsl.sparse.prune_grow import prefix_mask
from recbole_dsl.trainer import create_trainer

from experiments import load_profile  # beside this script
from results_files import merge_rows, record_command, write_csv, write_page

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = ["model", "dataset", "sparsity", "exponent", "seed", "epochs_trained", "ndcg@10", "recall@10", "min_length", "max_length"]
TABLE = ROOT / "benchmarks" / "results" / "prefix-lengths.csv"
PAGE = ROOT / "docs" / "prefix-lengths.md"


def popularity_lengths(counts: torch.Tensor, budget: int, columns: int, exponent: float) -> torch.Tensor:
    """Row lengths proportional to ``(counts + 1) ** exponent``, each in [1, columns], that
    add up to exactly ``budget``: the scale is found by bisection, and the entries left by
    rounding down go one each to the rows of the largest weight that are not full (ties in row
    order)."""
    weight = (counts.double() + 1) ** exponent
    low, high = 0.0, float(columns * budget)
    for _ in range(100):
        scale = (low + high) / 2
        if torch.clamp(torch.floor(scale * weight), 1, columns).sum() < budget:
            low = scale
        else:
            high = scale
    lengths = torch.clamp(torch.floor(low * weight), 1, columns).long()
    order = torch.argsort(weight, descending=True, stable=True)
    lengths[order[lengths[order] < columns][: budget - int(lengths.sum())]] += 1
    return lengths


def run_one(args: argparse.Namespace, sparsity: float, seed: int, exponent: float) -> Dict:
    """Train one model with popularity-based prefix rows; its test metrics."""
    profile = load_profile("converged")
    settings = {
        **profile.run_settings("quality", args.model, args.dataset), "dsl_method": "dsl_prefix", "update_interval": 10**9,
        "sparsity": sparsity, "seed": seed, "state": "ERROR", "checkpoint_dir": str(Path(args.work_dir) / "saved"),
        **({"data_path": args.data_path} if args.data_path else {}),
    }
    config = load_config(args.model, args.dataset, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    with recbole_warnings_silenced():
        dataset = create_dataset(config)
        train_data, valid_data, test_data = data_preparation(config, dataset)
        init_seed(config["seed"], config["reproducibility"])
        model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
        trainer = create_trainer(config, model)
        interactions = train_data._dataset.inter_feat
        counts = {
            dataset.user_num: torch.bincount(interactions[config["USER_ID_FIELD"]], minlength=dataset.user_num),
            dataset.item_num: torch.bincount(interactions[config["ITEM_ID_FIELD"]], minlength=dataset.item_num),
        }
        manager, lengths = trainer.mask_manager, []
        for name in manager.names:
            rows, columns = manager.param(name).shape
            if rows not in counts or dataset.user_num == dataset.item_num:
                print(f"error: cannot tell whether {name} ({rows} rows) holds the users or the items of {args.dataset}", file=sys.stderr)
                sys.exit(2)
            row_lengths = popularity_lengths(counts[rows], manager.budgets[name], columns, exponent)
            manager.set_mask(name, prefix_mask(row_lengths, columns))
            lengths.append(row_lengths)
        trainer.fit(train_data, valid_data, saved=True, show_progress=False)
        test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    trainer.tensorboard.close()
    return {
        "model": args.model, "dataset": args.dataset, "sparsity": sparsity, "exponent": exponent, "seed": seed,
        "epochs_trained": len(trainer.train_loss_dict), "ndcg@10": round(float(test["ndcg@10"]), 4),
        "recall@10": round(float(test["recall@10"]), 4),
        "min_length": min(int(x.min()) for x in lengths), "max_length": max(int(x.max()) for x in lengths),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="BPR", help="a model whose sparsified tensors are its user and item tables")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data_path", default=None)
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.9])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2020])
    parser.add_argument("--exponents", type=float, nargs="+", default=[0.0, 0.3])
    parser.add_argument("--work_dir", default=str(ROOT / "benchmarks" / "runs" / "prefix-lengths"))
    args = parser.parse_args()
    Path(args.work_dir).mkdir(parents=True, exist_ok=True)
    commands = record_command("prefix_lengths.py", args.work_dir, PAGE)
    sys.argv = sys.argv[:1]  # RecBole's Config reads the command line too

    key = ("model", "dataset", "sparsity", "exponent", "seed")
    done = {tuple(row[k] for k in key) for row in merge_rows(TABLE, [], key, [])}
    for sparsity in args.sparsity:
        for exponent in args.exponents:
            for seed in args.seeds:
                if (args.model, args.dataset, str(sparsity), str(exponent), str(seed)) in done:
                    continue
                row = run_one(args, sparsity, seed, exponent)
                print(row, flush=True)
                write_csv(TABLE, COLUMNS, merge_rows(TABLE, [row], key, []))

    rows = merge_rows(TABLE, [], key, [])
    groups: Dict[tuple, List[Dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["dataset"], row["sparsity"], row["exponent"]), []).append(row)
    cells = []
    for (model, dataset, sparsity, exponent), runs in sorted(groups.items(), key=lambda g: (g[0][:3], float(g[0][3]))):
        scores = [float(r["ndcg@10"]) for r in sorted(runs, key=lambda r: r["seed"])]
        spread = f" ± {statistics.stdev(scores):.4f}" if len(scores) > 1 else ""
        cells.append([
            model, dataset, sparsity, exponent, str(len(scores)), f"{statistics.mean(scores):.4f}{spread}",
            ", ".join(f"{s:.4f}" for s in scores), f"{runs[0]['min_length']} to {runs[0]['max_length']}",
        ])
    description = [
        "Prefix rows whose fixed lengths follow (count + 1) ** exponent, at the budget of the sparsity;",
        "exponent 0 is the uniform layout. Profile `converged`, test NDCG@10, seeds in order.",
    ]
    header = ["model", "dataset", "sparsity", "exponent", "seeds", "NDCG@10", "per seed", "row lengths"]
    write_page(PAGE, "Popularity-based prefix lengths against the uniform layout", description, commands, header, cells)


if __name__ == "__main__":
    main()
