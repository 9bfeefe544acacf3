"""Epoch-time benchmark: the training-epoch wall time of DSL against dense, side by side.

    python -m recbole_dsl.prepare movielens ../shared/data/ml-1m --name=ml-1m --out=data
    python benchmarks/epoch_time.py --data_path=data

For every model, ``--repeats`` pairs of runs (dense, then sparse at ``--sparsity`` with
the default method) train ``--epochs`` epochs each in their own ``run_recbole_dsl.py``
process, one thread each, alternating so that a change in the machine's load falls on
both. With ``--sparse_storage`` the sparse runs hold their embedding tables packed (the
property ``sparse_storage: True``). Each pair gives the ratio of the two runs' mean epoch
times; the table reports the median ratio over the pairs. A run's results JSON is kept
under ``--work_dir`` and reused when the benchmark runs again.

With ``--interleaved`` a dense and a sparse trainer of each model train in one process
instead, an epoch each in turn (the dense one first in even epochs, the sparse one in odd
ones) on the same batches' loader: every pair of epochs ran seconds apart, so a change in
the machine's load falls on both. The masks are explored for ``--explore_epochs`` epochs
(``update_epochs``) and frozen after them, and the table has a row for each phase. The table goes to
``benchmarks/results/epoch-time-<dataset>.csv`` and ``docs/epoch-time-<dataset>.md`` with
the commands that made it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from unittest import mock

import torch
import yaml

from results_files import benchmark_parser, merge_rows, parse_benchmark_arguments, record_command, write_csv, write_page  # beside this script

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["BPR", "LightGCN", "NeuMF", "MultiVAE", "SASRec"]
# The quick profile's sizes for SASRec, and its evaluation batches: NeuMF scores every
# (user, item) pair through its MLP, quickest in small batches. Evaluation and counting are
# outside the epoch time.
MODEL_SETTINGS = {
    "SASRec": ["--MAX_ITEM_LIST_LENGTH=20", "--hidden_size=32", "--inner_size=64", "--n_layers=1", "--n_heads=1", "--eval_batch_size=4096000"],
    "NeuMF": ["--eval_batch_size=16384"],
}
COLUMNS = [
    "model", "method", "storage", "runs", "phase", "sparsity", "pairs", "ratio_median", "ratio_min", "ratio_max",
    "dense_epoch_seconds", "sparse_epoch_seconds", "mask_share",
]
KEY = ("model", "method", "sparsity", "storage", "runs", "phase")


def run_file(work_dir: str, model: str, sparsity: float, repeat: int, storage: str = "masks") -> Path:
    """Where a run's results JSON is kept; packed runs (``sparse_storage``) have their own."""
    return Path(work_dir) / f"{model}-{sparsity}-{'packed-' if storage == 'packed' else ''}{repeat}.json"


def run_one(model: str, sparsity: float, repeat: int, args: argparse.Namespace) -> Optional[Dict]:
    """Train one run (or reuse its results file from an earlier benchmark run)."""
    packed = args.sparse_storage and sparsity > 0
    out = run_file(args.work_dir, model, sparsity, repeat, "packed" if packed else "masks")
    if out.exists():
        return json.loads(out.read_text())
    command = [
        sys.executable, str(ROOT / "run_recbole_dsl.py"), f"--model={model}", f"--dataset={args.dataset}",
        *([f"--data_path={args.data_path}"] if args.data_path else []), f"--sparsity={sparsity}", f"--epochs={args.epochs}",
        f"--eval_step={args.epochs}", "--stopping_step=1000", "--show_progress=False",
        *MODEL_SETTINGS.get(model, ["--eval_batch_size=4096000"]), f"--checkpoint_dir={Path(args.work_dir) / 'saved'}",
        f"--results_file={out}", *(["--sparse_storage=True"] if packed else []),
    ]
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=args.work_dir, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        print(f"[epoch time] {model} sparsity {sparsity} failed: {completed.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    result = json.loads(out.read_text())
    print(
        f"[epoch time] {model} sparsity {sparsity} repeat {repeat}: {result['costs']['epoch_seconds']:.2f} s per epoch "
        f"({time.perf_counter() - started:.0f} s in all)", flush=True,
    )
    return result


def table_rows(work_dir: str, sparsity: float, storage: str = "masks") -> List[Dict]:
    """One row per model from every complete (dense, sparse) pair in ``work_dir`` whose
    sparse run held its tables as ``storage`` (masks, or packed with ``sparse_storage``)."""
    rows = []
    for model in MODELS:
        pairs, masks, method = [], [], ""
        for dense_file in sorted(Path(work_dir).glob(f"{model}-0.0-*.json")):
            sparse_file = run_file(work_dir, model, sparsity, int(dense_file.stem.rpartition("-")[2]), storage)
            if not sparse_file.exists():
                continue
            dense, sparse = (json.loads(f.read_text()) for f in (dense_file, sparse_file))
            method = sparse["dsl"]["dsl_method"]
            pairs.append((dense["costs"]["epoch_seconds"], sparse["costs"]["epoch_seconds"]))
            masks.append(sparse["costs"].get("mask_seconds", math.nan) / sparse["costs"].get("epochs_trained", 1))
        if pairs:
            measured = masks if not any(math.isnan(m) for m in masks) else None
            rows.append(ratio_row(model, method, storage, "processes", "exploring", sparsity, pairs, measured))
    return rows


def ratio_row(
    model: str, method: str, storage: str, runs: str, phase: str, sparsity: float, pairs: List[Tuple[float, float]],
    mask_seconds: Optional[List[float]] = None,
) -> Dict:
    """The table's row for (dense, sparse) epoch-time ``pairs``; ``mask_seconds``: the
    sparse epochs' time in the masks' step hooks, where it was measured."""
    ratios = [s / d for d, s in pairs]
    shares = [m / s for m, (_, s) in zip(mask_seconds, pairs)] if mask_seconds else []
    return {
        "model": model, "method": method, "storage": storage, "runs": runs, "phase": phase, "sparsity": sparsity,
        "pairs": len(pairs), "ratio_median": round(statistics.median(ratios), 4), "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4), "dense_epoch_seconds": round(statistics.median(d for d, _ in pairs), 3),
        "sparse_epoch_seconds": round(statistics.median(s for _, s in pairs), 3),
        "mask_share": round(statistics.median(shares), 4) if shares else "",
    }


def interleaved_file(work_dir: str, model: str, sparsity: float, method: str, storage: str = "masks") -> Path:
    return Path(work_dir) / f"{model}-{sparsity}-{method}-{'packed-' if storage == 'packed' else ''}interleaved.json"


def settings_dict(arguments: List[str]) -> Dict:
    """``--key=value`` command-line settings as a config dict, values read as YAML."""
    return {key.lstrip("-"): yaml.safe_load(value) for key, value in (a.split("=", 1) for a in arguments)}


def run_interleaved(model: str, args: argparse.Namespace) -> Dict:
    """Train a dense and a sparse trainer of ``model`` in this process, an epoch each in
    turn; returns their epoch times, each epoch marked exploring or frozen (or reuses the
    file of an earlier benchmark run)."""
    storage = "packed" if args.sparse_storage else "masks"
    out = interleaved_file(args.work_dir, model, args.sparsity, args.method, storage)
    if out.exists():
        return json.loads(out.read_text())
    from recbole.data import data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_dsl.quick_start import load_config, load_dataset
    from recbole_dsl.trainer import create_trainer

    trainers, train_data = [], None
    for sparsity in (0.0, args.sparsity):
        # RecBole's Config reads sys.argv too: this benchmark's own options are not its settings.
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            config = load_config(model, args.dataset, config_dict={
                **({"data_path": args.data_path} if args.data_path else {}), "sparsity": sparsity, "epochs": args.epochs,
                "update_epochs": args.explore_epochs, "show_progress": False, "state": "ERROR",
                **({"dsl_method": args.method} if sparsity > 0 else {}),
                "checkpoint_dir": str(Path(args.work_dir) / "saved"), "sparse_storage": bool(args.sparse_storage and sparsity > 0),
                **settings_dict(MODEL_SETTINGS.get(model, [])),
            })
        init_seed(config["seed"], config["reproducibility"])
        if train_data is None:
            train_data, _, _ = data_preparation(config, load_dataset(config))
        init_seed(config["seed"], config["reproducibility"])
        trainers.append(create_trainer(config, get_model(model)(config, train_data._dataset)))
    mask_seconds = []
    for epoch in range(args.epochs):
        before = trainers[1].mask_manager.seconds["hooks"]
        for trainer in trainers if epoch % 2 == 0 else trainers[::-1]:
            trainer._train_epoch(train_data, epoch)
        mask_seconds.append(trainers[1].mask_manager.seconds["hooks"] - before)
        dense, sparse = (t.epoch_seconds[-1] for t in trainers)
        print(f"[epoch time] {model} epoch {epoch}: dense {dense:.2f} s, sparsity {args.sparsity} {sparse:.2f} s", flush=True)
    result = {
        "method": trainers[1].config["dsl_method"],
        "storage": storage,
        "epochs": [
            {"dense": d, "sparse": s, "mask": m, "exploring": epoch < args.explore_epochs}
            for epoch, (d, s, m) in enumerate(zip(trainers[0].epoch_seconds, trainers[1].epoch_seconds, mask_seconds))
        ],
    }
    out.write_text(json.dumps(result, indent=1))
    return result


def interleaved_rows(work_dir: str, sparsity: float) -> List[Dict]:
    """Rows for every interleaved run in ``work_dir`` (each model, method and storage): one
    per phase."""
    rows = []
    for model in MODELS:
        for path in sorted(Path(work_dir).glob(f"{model}-{sparsity}-*interleaved.json")):
            rows.extend(phase_rows(model, sparsity, json.loads(path.read_text())))
    return rows


def phase_rows(model: str, sparsity: float, result: Dict) -> List[Dict]:
    """One interleaved run's rows: its exploring epochs and its frozen ones."""
    rows = []
    for phase, exploring in (("exploring", True), ("frozen", False)):
        epochs = [e for e in result["epochs"] if e["exploring"] == exploring]
        if epochs:
            pairs = [(e["dense"], e["sparse"]) for e in epochs]
            masks = [e["mask"] for e in epochs] if all("mask" in e for e in epochs) else None
            rows.append(ratio_row(model, result["method"], result["storage"], "one process", phase, sparsity, pairs, masks))
    return rows


def write_outputs(rows: List[Dict], args: argparse.Namespace, commands: List[str]) -> None:
    table = ROOT / "benchmarks" / "results" / f"epoch-time-{args.dataset}.csv"
    rows = merge_rows(table, rows, KEY, MODELS)
    write_csv(table, COLUMNS, rows)
    description = [
        "The training-epoch wall time of a sparse run divided by that of a dense run of the same",
        "model, on one thread; the median (and range) over the pairs. Evaluation and cost counting",
        "are not part of an epoch. Storage: how the sparse run held its embedding tables, dense with",
        "masks or packed (`sparse_storage: True`). Runs: `processes`, a dense and a sparse run in",
        "their own processes one after the other, each pair the ratio of their mean epoch times, every",
        "epoch exploring masks; `one process` (`--interleaved`), a dense and a sparse trainer training",
        "an epoch each in turn, each pair two epochs seconds apart. Phase: epochs that explore masks",
        "(prune and grow every `update_interval` steps, with interval growth summing the gradient) or",
        "epochs after T_end with the masks frozen (`update_epochs`, 30 by default). Masks: the median",
        "share of a sparse epoch spent in the masks' optimizer-step hooks (masking, interval sums and",
        "mask updates; `mask_seconds` of the results), where it was recorded.",
    ]
    header = [
        "model", "method", "storage", "runs", "phase", "sparsity", "pairs", "epoch time / dense (median)", "range",
        "dense epoch (s)", "sparse epoch (s)", "masks",
    ]
    cells = [
        [
            row["model"], row["method"], row["storage"], row["runs"], row["phase"], str(row["sparsity"]), str(row["pairs"]),
            f"{float(row['ratio_median']):.3f}",
            f"{float(row['ratio_min']):.3f}-{float(row['ratio_max']):.3f}", f"{float(row['dense_epoch_seconds']):.2f}",
            f"{float(row['sparse_epoch_seconds']):.2f}", f"{float(row['mask_share']):.3f}" if row.get("mask_share") not in (None, "") else "–",
        ]
        for row in rows
    ]
    write_page(ROOT / "docs" / f"epoch-time-{args.dataset}.md", f"Epoch time of DSL against dense on {args.dataset}", description, commands, header, cells)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run (with --interleaved: per trainer)")
    parser.add_argument("--repeats", type=int, default=3, help="(dense, sparse) pairs per model")
    parser.add_argument("--sparse_storage", action="store_true", help="the sparse runs hold their embedding tables packed")
    parser.add_argument("--interleaved", action="store_true", help="a dense and a sparse trainer in one process, an epoch each in turn")
    parser.add_argument("--method", default="dsl_mixed", help="with --interleaved: the sparse trainer's dsl_method")
    parser.add_argument("--explore_epochs", type=int, default=1, help="with --interleaved: epochs that explore masks before they freeze")
    args = parse_benchmark_arguments(parser, "epoch-time")
    commands = record_command("epoch_time.py", args.work_dir, ROOT / "docs" / f"epoch-time-{args.dataset}.md")
    storage = "packed" if args.sparse_storage else "masks"
    if args.interleaved:
        torch.set_num_threads(1)  # one thread, as the separate runs have
    for model in args.models:
        if args.interleaved:
            run_interleaved(model, args)
            write_outputs(interleaved_rows(args.work_dir, args.sparsity), args, commands)
            continue
        for repeat in range(args.repeats):
            for sparsity in (0.0, args.sparsity):
                run_one(model, sparsity, repeat, args)
        write_outputs(table_rows(args.work_dir, args.sparsity, storage), args, commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
