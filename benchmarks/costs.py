"""Cost benchmark: MAC, byte and epoch-time ratios of DSL runs against the dense model
trained in the same benchmark run, on ml-1m.

    python -m recbole_dsl.prepare movielens ../shared/data/ml-1m --name=ml-1m --out=data
    python benchmarks/costs.py --data_path=data

Every (model, sparsity) pair is one ``run_recbole_dsl.py`` process; its results JSON is
kept under ``--work_dir`` and reused when the benchmark is run again, so an interrupted
benchmark resumes. The table holds every run in ``--work_dir`` and lists the commands
that made them. The table goes to ``benchmarks/results/costs-<dataset>.csv`` and
``docs/costs-<dataset>.md`` with the command that made it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from results_files import benchmark_parser, parse_benchmark_arguments, record_command, write_csv, write_page  # beside this script

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["LightGCN", "BPR", "NeuMF", "MultiVAE", "SASRec"]
SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
COLUMNS = [
    "model", "sparsity", "final_density", "inference_mac_ratio", "train_mac_ratio", "param_byte_ratio",
    "epoch_time_ratio", "inference_macs", "inference_macs_dense", "train_macs", "train_macs_dense",
    "param_bytes_compact", "param_bytes_dense", "nonzero_params", "params", "epoch_seconds", "dense_epoch_seconds",
    "peak_rss_bytes", "epochs",
]


def run_one(model: str, sparsity: float, args: argparse.Namespace) -> Optional[Dict]:
    """Train one configuration (or reuse its results from an earlier benchmark run)."""
    out = Path(args.work_dir) / f"{model}-{sparsity}.json"
    if out.exists():
        return json.loads(out.read_text())
    command = [
        sys.executable, str(ROOT / "run_recbole_dsl.py"), f"--model={model}", f"--dataset={args.dataset}",
        *([f"--data_path={args.data_path}"] if args.data_path else []), f"--sparsity={sparsity}", f"--epochs={args.epochs}",
        f"--eval_step={args.epochs}", "--stopping_step=1000", "--show_progress=False",
        f"--checkpoint_dir={Path(args.work_dir) / 'saved'}", f"--results_file={out}",
    ]
    print(f"[costs] {model} sparsity {sparsity}", flush=True)
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=args.work_dir, capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"[costs] {model} sparsity {sparsity} failed: {completed.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    print(f"[costs] {model} sparsity {sparsity} done in {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(out.read_text())


def table_rows(results: Dict[str, Dict[float, Dict]]) -> List[Dict]:
    rows = []
    for model, by_sparsity in results.items():
        dense_seconds = by_sparsity.get(0.0, {}).get("costs", {}).get("epoch_seconds")
        for sparsity, result in sorted(by_sparsity.items()):
            costs = result["costs"]
            rows.append({
                "model": model,
                "sparsity": sparsity,
                "final_density": round(result["final_density"], 6),
                "inference_mac_ratio": costs["inference_macs"] / costs["inference_macs_dense"],
                "train_mac_ratio": costs["train_macs"] / costs["train_macs_dense"],
                "param_byte_ratio": costs["param_bytes_compact"] / costs["param_bytes_dense"],
                "epoch_time_ratio": costs["epoch_seconds"] / dense_seconds if dense_seconds else None,
                **{key: costs[key] for key in COLUMNS if key in costs},
                "dense_epoch_seconds": dense_seconds,
                "epochs": costs["epochs_trained"],
            })
    return rows


def write_outputs(rows: List[Dict], dataset: str, commands: List[str]) -> None:
    write_csv(ROOT / "benchmarks" / "results" / f"costs-{dataset}.csv", COLUMNS, rows)

    def ratio(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.4f}"

    description = [
        "Ratios of each run's figure to the dense model's (see [costs.md](costs.md) for what is",
        "counted). MAC and byte ratios are exact counts; the epoch-time ratio divides the mean",
        "training-epoch wall time of the run by that of the dense run (sparsity 0) of the same",
        "benchmark run, on a shared machine, so it carries timing noise.",
    ]
    header = ["model", "sparsity", "final density", "inference MACs", "training MACs", "bytes (compact)", "epoch time"]
    cells = [
        [
            row["model"], str(row["sparsity"]), f"{row['final_density']:.4f}", ratio(row["inference_mac_ratio"]),
            ratio(row["train_mac_ratio"]), ratio(row["param_byte_ratio"]), ratio(row["epoch_time_ratio"]),
        ]
        for row in rows
    ]
    write_page(ROOT / "docs" / f"costs-{dataset}.md", f"Cost benchmark on {dataset}", description, commands, header, cells)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--sparsities", nargs="+", type=float, default=SPARSITIES)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per run (ratios do not depend on it)")
    args = parse_benchmark_arguments(parser, "costs")
    commands = record_command("costs.py", args.work_dir)
    for model in args.models:
        for sparsity in sorted(set([0.0] + args.sparsities)):
            run_one(model, sparsity, args)
        write_outputs(table_rows(collect(args.work_dir)), args.dataset, commands)
    return 0


def collect(work_dir: str) -> Dict[str, Dict[float, Dict]]:
    """Every finished run in ``work_dir``, also those of earlier invocations, by model."""
    results: Dict[str, Dict[float, Dict]] = {}
    for path in sorted(Path(work_dir).glob("*.json")):
        model, _, sparsity = path.stem.rpartition("-")
        results.setdefault(model, {})[float(sparsity)] = json.loads(path.read_text())
    order = {model: i for i, model in enumerate(MODELS)}
    return dict(sorted(results.items(), key=lambda item: order.get(item[0], len(order))))


if __name__ == "__main__":
    sys.exit(main())
