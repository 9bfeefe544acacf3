"""Counting benchmark: how long the MAC count of the test pass takes against the pass itself.

    python -m recbole_dsl.prepare movielens ../shared/data/ml-1m --name=ml-1m --out=data
    python benchmarks/counting.py --data_path=data --dataset=ml-1m

Every model trains one epoch in its own ``run_recbole_dsl.py`` process (one thread, a large
training batch: the model's quality does not matter here) and is tested with RecBole's
default ``eval_batch_size`` of 4096, which scores one user per batch on a catalogue of more
than 4,096 items. The run's costs give the test pass's time (``test_seconds``) and the
time of counting its MACs (``inference_count_seconds``), measured in the same process. A
run's results JSON is kept under ``--work_dir`` and reused when the benchmark runs again.
The table goes to ``benchmarks/results/counting-<dataset>.csv`` and
``docs/counting-<dataset>.md`` with the commands that made it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from results_files import benchmark_parser, merge_rows, parse_benchmark_arguments, record_command, write_csv, write_page  # beside this script

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["BPR", "LightGCN", "MultiVAE", "NeuMF"]
COLUMNS = ["model", "test_seconds", "inference_count_seconds", "share", "inference_macs"]
RECBOLE_EVAL_BATCH_SIZE = 4096  # RecBole's own default, which dataset property files may raise


def run_one(model: str, args: argparse.Namespace) -> Optional[Dict]:
    """Train and test one model (or reuse its results file from an earlier benchmark run)."""
    out = Path(args.work_dir) / f"{model}.json"
    if out.exists():
        return json.loads(out.read_text())
    command = [
        sys.executable, str(ROOT / "run_recbole_dsl.py"), f"--model={model}", f"--dataset={args.dataset}",
        *([f"--data_path={args.data_path}"] if args.data_path else []), "--epochs=1", "--train_batch_size=65536",
        f"--eval_batch_size={RECBOLE_EVAL_BATCH_SIZE}", "--show_progress=False",
        f"--checkpoint_dir={Path(args.work_dir) / 'saved'}", f"--results_file={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=args.work_dir, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        print(f"[counting] {model} failed: {completed.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    return json.loads(out.read_text())


def table_row(model: str, result: Dict) -> Dict:
    costs = result["costs"]
    return {
        "model": model,
        "test_seconds": costs["test_seconds"],
        "inference_count_seconds": costs["inference_count_seconds"],
        "share": costs["inference_count_seconds"] / costs["test_seconds"],
        "inference_macs": costs["inference_macs"],
    }


def write_outputs(rows: List[Dict], args: argparse.Namespace, commands: List[str]) -> None:
    table = ROOT / "benchmarks" / "results" / f"counting-{args.dataset}.csv"
    rows = merge_rows(table, rows, ("model",), MODELS)
    write_csv(table, COLUMNS, rows)
    description = [
        "The wall time of counting the MACs of one test pass (`inference_count_seconds`) against",
        f"that of the test pass itself (`test_seconds`, RecBole's default `eval_batch_size` of {RECBOLE_EVAL_BATCH_SIZE}),",
        "measured in the same run after one training epoch, one thread.",
    ]
    header = ["model", "test pass (s)", "counting (s)", "counting / test pass", "inference MACs"]
    cells = [
        [
            row["model"], f"{float(row['test_seconds']):.2f}", f"{float(row['inference_count_seconds']):.2f}",
            f"{float(row['share']):.3f}", f"{int(row['inference_macs']):,d}",
        ]
        for row in rows
    ]
    write_page(ROOT / "docs" / f"counting-{args.dataset}.md", f"Counting the test pass on {args.dataset}", description, commands, header, cells)


def main() -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--models", nargs="+", default=MODELS)
    args = parse_benchmark_arguments(parser, "counting")
    commands = record_command("counting.py", args.work_dir, ROOT / "docs" / f"counting-{args.dataset}.md")
    for model in args.models:
        run_one(model, args)
        # Every model measured in this folder, also by earlier invocations.
        found = {path.stem: json.loads(path.read_text()) for path in Path(args.work_dir).glob("*.json")}
        write_outputs([table_row(m, result) for m, result in found.items()], args, commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
