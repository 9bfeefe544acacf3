"""A sweep's results: one row per trial from Ray's saved state, ``results.csv`` and
``best_config.yaml``."""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from ray import cloudpickle, tune
from ray.tune.experiment import Trial

from recbole_dsl.tools.sweep.sweep_file import _write_yaml, trial_settings

RESULTS_FILE = "results.csv"
BEST_CONFIG_FILE = "best_config.yaml"
FINISHED, STOPPED = "TERMINATED", "STOPPED"


@dataclass
class SweepOutcome:
    """What a finished (or interrupted) sweep left in its directory."""

    rows: List[Dict[str, Any]]
    results_file: str
    best_config_file: Optional[str]
    complete: bool



def _error_line(trial: Trial) -> str:
    """A failed trial's exception on one line; its traceback stays in the trial's error.txt."""
    if trial.pickled_error_file and os.path.isfile(trial.pickled_error_file):
        with open(trial.pickled_error_file, "rb") as f:
            error = cloudpickle.load(f)
        error = getattr(error, "cause", None) or error  # RayTaskError wraps the trial's exception
        lines = str(error).strip().splitlines()
        return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()
    if trial.error_file and os.path.isfile(trial.error_file):
        lines = [line.strip() for line in Path(trial.error_file).read_text(encoding="utf-8").splitlines() if line.strip()]
        return lines[-1] if lines else ""
    return ""


def _tested(result: Dict[str, Any]) -> bool:
    """Whether a trial's last result is its final report, which holds the test metrics."""
    return any(key.startswith("test.") for key in result)


def _trial_status(trial: Trial) -> str:
    """Ray's status, with STOPPED for a trial that ASHA ended before its test evaluation."""
    return STOPPED if trial.status == Trial.TERMINATED and not _tested(trial.last_result) else trial.status



def collect_rows(experiment_dir: str, swept_keys: List[str], metric: str) -> List[Dict[str, Any]]:
    """One row per trial, in the order Ray created them, from the experiment's saved state."""
    analysis = tune.ExperimentAnalysis(experiment_dir)
    rows = []
    for trial in sorted(analysis.trials, key=lambda t: t.trial_id):
        result = trial.last_result or {}
        row: Dict[str, Any] = {"trial_id": trial.trial_id, "status": _trial_status(trial)}
        row.update({key: trial.config.get(key) for key in swept_keys})
        row[f"best_valid.{metric}"] = result.get(f"best_valid.{metric}")
        row.update({key: value for key, value in result.items() if key.startswith(("test.", "costs."))})
        row["final_density"] = result.get("final_density")
        row["epochs"] = result.get("epoch")
        row["time_s"] = round(result["time_total_s"], 1) if "time_total_s" in result else None
        row["error"] = _error_line(trial) if trial.status == Trial.ERROR else ""
        rows.append(row)
    return rows


def _column_rank(column: str) -> int:
    groups = ("test.", "final_density", "costs.", "epochs", "time_s", "error")
    return next((rank for rank, group in enumerate(groups, 1) if column.startswith(group)), 0)


def write_results_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    """``results.csv``: trial id, status, swept values and best validation score, then the test
    metrics, final density, costs, epochs, time and error; empty where a trial has none."""
    columns: List[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    columns.sort(key=_column_rank)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if value is None else value for key, value in row.items()})
    os.replace(tmp, path)


def best_row(rows: List[Dict[str, Any]], metric: str, mode: str) -> Optional[Dict[str, Any]]:
    """The finished trial with the best validation score (STOPPED trials never finished)."""
    key = f"best_valid.{metric}"
    finished = [row for row in rows if row["status"] == FINISHED and row[key] is not None and not math.isnan(row[key])]
    if not finished:
        return None
    return (max if mode == "max" else min)(finished, key=lambda row: row[key])


def _best_config_header(model: str, dataset: str, row: Dict[str, Any], metric: str, path: str) -> str:
    return (
        f"# Best trial {row['trial_id']} of a recbole-dsl sweep of {model} on {dataset}: "
        f"best valid {metric} {row[f'best_valid.{metric}']}.\n"
        f"# Reproduce it: python run_recbole_dsl.py --model={model} --dataset={dataset} --config_files={path}\n"
    )



def _write_outcome(
    model: str, dataset: str, sweep_dir: str, settings: Dict[str, Any], swept_keys: List[str], metric: str, mode: str
) -> SweepOutcome:
    rows = collect_rows(sweep_dir, swept_keys, metric)
    results_file = os.path.join(sweep_dir, RESULTS_FILE)
    write_results_csv(results_file, rows)
    counts = Counter(row["status"] for row in rows)
    complete = all(row["status"] in (FINISHED, STOPPED, Trial.ERROR) for row in rows)
    print(
        f"{'finished' if complete else 'interrupted'}: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + f"; results in {results_file}",
        flush=True,
    )
    best = best_row(rows, metric, mode)
    best_config_file = None
    if best is not None:
        best_config_file = os.path.join(sweep_dir, BEST_CONFIG_FILE)
        best_settings = trial_settings(settings, {key: best[key] for key in swept_keys})
        _write_yaml(best_config_file, best_settings, _best_config_header(model, dataset, best, metric, best_config_file))
        values = " ".join(f"{key}={best[key]}" for key in swept_keys)
        print(f"best trial {best['trial_id']}: {values}, best valid {metric} {best[f'best_valid.{metric}']:.4f}", flush=True)
        print(f"best configuration: {best_config_file}", flush=True)
    else:
        print("no trial finished, so there is no best configuration", flush=True)
    if not complete:
        print("run the same command again to resume the sweep", flush=True)
    return SweepOutcome(rows=rows, results_file=results_file, best_config_file=best_config_file, complete=complete)
