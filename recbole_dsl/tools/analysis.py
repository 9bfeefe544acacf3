"""Analyses of a trained sparse model.

``popularity``: how the non-zeros of the user and item embedding tables are spread over
popularity groups (the DSL paper's Figure 4). Users and items are sorted by their number
of training interactions and cut into groups holding equal shares of the interactions;
each group's density is the fraction of non-zero entries in its embedding rows.

    python -m recbole_dsl.analysis popularity --checkpoint=saved/LightGCN-X.pth --dataset=ml-1m --out=DIR

The checkpoint's model is rebuilt from the same settings it was trained with: pass the
same ``--config_files`` and ``--key=value`` settings as to ``run_recbole_dsl.py``.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from recbole.data import data_preparation
from recbole.utils import get_model, init_seed
from torch import nn

from recbole_dsl.errors import DSLCheckpointError, DSLConfigError, DSLError
from recbole_dsl.quick_start import load_config, load_dataset, recbole_warnings_silenced
from recbole_dsl.trainer import read_checkpoint

POPULARITY_COLUMNS = ("side", "group", "entities", "interactions", "nnz", "numel", "density")


def popularity_groups(counts: np.ndarray, n_groups: int = 10) -> np.ndarray:
    """Group of every entity, 0 the least popular: entities sorted by count (ties by id)
    and cut where the running share of interactions comes nearest to k / ``n_groups``."""
    counts = np.asarray(counts, dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    mass = np.cumsum(counts[order])
    total = int(mass[-1]) if len(mass) else 0
    bounds = [0]
    for k in range(1, n_groups):
        target = total * k / n_groups
        i = int(np.searchsorted(mass, target))
        if i >= len(mass):
            cut = len(mass)
        else:
            below = int(mass[i - 1]) if i > 0 else 0
            cut = i + 1 if mass[i] - target < target - below else i
        bounds.append(max(bounds[-1], cut))
    bounds.append(len(counts))
    groups = np.empty(len(counts), dtype=np.int64)
    for g in range(n_groups):
        groups[order[bounds[g] : bounds[g + 1]]] = g
    return groups


def group_density(
    counts: np.ndarray, row_nnz: np.ndarray, row_numel: int, side: str, n_groups: int = 10
) -> List[Dict[str, Any]]:
    """One row per popularity group: its entities, interactions, non-zeros and density.
    ``row_nnz[e]`` is the number of active entries of entity ``e``'s embedding rows, out of
    ``row_numel`` per entity."""
    groups = popularity_groups(counts, n_groups)
    rows = []
    for g in range(n_groups):
        members = groups == g
        entities = int(members.sum())
        nnz, numel = int(row_nnz[members].sum()), entities * row_numel
        rows.append(
            {
                "side": side,
                "group": g + 1,
                "entities": entities,
                "interactions": int(counts[members].sum()),
                "nnz": nnz,
                "numel": numel,
                "density": nnz / numel if numel else math.nan,
            }
        )
    return rows


def embedding_tables(model: nn.Module, n_users: int, n_items: int) -> Dict[str, List[str]]:
    """Weights of the ``nn.Embedding`` tables with one row per user or per item."""
    tables: Dict[str, List[str]] = {"user": [], "item": []}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Embedding):
            continue
        sides = [side for side, n in (("user", n_users), ("item", n_items)) if module.num_embeddings == n]
        if len(sides) == 2:  # as many users as items: the name decides
            sides = [side for side in sides if side in name.lower()]
        if len(sides) == 1:
            tables[sides[0]].append(f"{name}.weight")
    return tables


def popularity_analysis(
    checkpoint_file: str,
    dataset: Optional[str] = None,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    n_groups: int = 10,
) -> List[Dict[str, Any]]:
    """Density by popularity group of the user and item embedding rows of a checkpoint."""
    checkpoint = read_checkpoint(checkpoint_file)
    masks, trained = checkpoint["sparsity"]["masks"], checkpoint["config"]
    config = load_config(trained["model"], dataset or trained["dataset"], config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    with recbole_warnings_silenced():
        train_data, _, _ = data_preparation(config, load_dataset(config))
    train = train_data._dataset
    model = get_model(config["model"])(config, train)
    for name, mask in masks.items():
        shape = tuple(model.get_parameter(name).shape) if name in dict(model.named_parameters()) else None
        if shape != tuple(mask.shape):
            raise DSLCheckpointError(
                f"checkpoint {checkpoint_file} does not fit {config['model']} built from these settings ({name}): "
                "pass the settings it was trained with"
            )

    rows: List[Dict[str, Any]] = []
    tables = embedding_tables(model, train.user_num, train.item_num)
    for side, field, n in (("user", train.uid_field, train.user_num), ("item", train.iid_field, train.item_num)):
        names = [name for name in tables[side] if name in masks]
        if not names:
            continue
        counts = torch.bincount(train.inter_feat[field], minlength=n).numpy()
        row_nnz = sum(masks[name].reshape(n, -1).sum(dim=1).numpy() for name in names)
        row_numel = sum(masks[name][0].numel() for name in names)
        # id 0 is RecBole's padding entry, not a user or item
        rows.extend(group_density(counts[1:], row_nnz[1:], row_numel, side, n_groups))
    if not rows:
        raise DSLConfigError(
            f"{config['model']} has no sparsified embedding table with one row per user or item to analyse"
        )
    return rows


def write_popularity(rows: Sequence[Dict[str, Any]], out_dir: str, title: str) -> Dict[str, str]:
    """``popularity.csv`` and ``popularity.png`` in ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    csv_file, png_file = os.path.join(out_dir, "popularity.csv"), os.path.join(out_dir, "popularity.png")
    with open(csv_file, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=POPULARITY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot_popularity(rows, png_file, title)
    return {"csv": csv_file, "png": png_file}


def plot_popularity(rows: Sequence[Dict[str, Any]], png_file: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [side for side in ("user", "item") if any(r["side"] == side for r in rows)]
    fig, axes = plt.subplots(1, len(sides), figsize=(5 * len(sides), 3.5), squeeze=False)
    for ax, side in zip(axes[0], sides):
        side_rows = [r for r in rows if r["side"] == side]
        ax.bar([r["group"] for r in side_rows], [r["density"] for r in side_rows], color="tab:blue")
        overall = sum(r["nnz"] for r in side_rows) / sum(r["numel"] for r in side_rows)
        ax.axhline(overall, color="tab:gray", linestyle="--", label=f"all {side}s: {overall:.3f}")
        ax.set_xticks([r["group"] for r in side_rows])
        ax.set_xlabel(f"{side} popularity group (1 = least popular)")
        ax.set_ylabel("density of embedding rows")
        ax.legend(loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_file, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_dsl.analysis", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    popularity = commands.add_parser("popularity", help="density of embedding rows by popularity group")
    popularity.add_argument("--checkpoint", required=True, help="a checkpoint written by run_recbole_dsl.py")
    popularity.add_argument("--dataset", help="dataset name (default: the checkpoint's)")
    popularity.add_argument("--out", required=True, help="folder for popularity.csv and popularity.png")
    popularity.add_argument("--groups", type=int, default=10, help="number of popularity groups")
    popularity.add_argument("--config_files", help="space-separated YAML files the model was trained with")
    args, others = parser.parse_known_args(argv)
    # Any other --key=value is a RecBole or DSL setting of the run, as for run_recbole_dsl.py:
    # RecBole's Config reads them from sys.argv, which must not hold this tool's own options.
    sys.argv[1:] = others
    config_files = args.config_files.split() if args.config_files else None
    try:
        if args.groups < 1:
            raise DSLConfigError(f"invalid --groups={args.groups}: expected an integer >= 1")
        rows = popularity_analysis(args.checkpoint, args.dataset, config_files, n_groups=args.groups)
        paths = write_popularity(rows, args.out, f"{Path(args.checkpoint).stem}: density by popularity")
    except DSLError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for row in rows:
        print(f"{row['side']:<5} group {row['group']:>2}: {row['entities']:>7,d} entities, "
              f"{row['interactions']:>9,d} interactions, density {row['density']:.4f}")
    print(f"written: {paths['csv']}, {paths['png']}")
    return 0

