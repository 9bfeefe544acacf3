"""The DSL paper's experiments on this implementation: quality against sparsity of five
methods at the same parameter budget, sensitivity to ΔT and ρ0, density by popularity
and convergence of the training loss.

    python -m recbole_dsl.prepare movielens ../shared/data/ml-1m --name=ml-1m --out=data
    python benchmarks/experiments.py quality --profile=quick
    python benchmarks/experiments.py quality --profile=quick --models LightGCN --datasets gowalla
    python benchmarks/experiments.py sensitivity --profile=quick
    python benchmarks/experiments.py popularity --profile=quick
    python benchmarks/experiments.py convergence --profile=quick
    python benchmarks/experiments.py plot

Methods (``dsl_method``): dense (the reference), dense_small (the same model, dense, with
its sizes scaled to the sparse budget), rp (static random mask), mp (dense training,
one-shot magnitude pruning, fine-tuning), set (random growth), dsl, and the DSL variants
dsl_interval (growing by the gradient summed over the update interval), dsl_prefix
(variable-length embedding rows), dsl_mixed (both), dsl_erk (dsl_mixed with ERK budgets) and
dsl_momentum (dsl_mixed growing by the optimizer's running average of the gradient).
Every run is one ``run_recbole_dsl.py`` process with the profile's settings
(``benchmarks/profiles/<profile>.yaml``). Its row is appended to
``benchmarks/results/<experiment>.csv`` as soon as it finishes; configurations already in
the CSV are skipped, so an interrupted experiment resumes where it stopped; a run that was
itself interrupted (the harness stopped, the run killed or past ``--timeout``) goes on from
its last best-model checkpoint, as it would have without the interruption. A failed run
is recorded with its error and the others go on. ``plot`` redraws ``docs/figures/`` and
rewrites ``docs/results.md`` from the CSVs.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml
from results_files import DENSE_METHODS, METHOD_NAMES, read_rows, slug  # beside this script

ROOT = Path(__file__).resolve().parents[1]
PROFILES_DIR = ROOT / "benchmarks" / "profiles"
METHODS = tuple(METHOD_NAMES)
SPARSE_METHODS = tuple(m for m in METHODS if m not in DENSE_METHODS)
EXPLORING_METHODS = ("set", *(m for m in METHODS if m.startswith("dsl")))
BACKBONES = ("BPR", "LightGCN", "NeuMF", "MultiVAE", "SASRec")
SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.99)
PROFILE_KEYS = {"seeds", "settings", "datasets", "models", "experiments"}
PREPARE_COMMANDS = {
    "ml-1m": "movielens ../shared/data/ml-1m",
    "gowalla": "lightgcn ../shared/data/gowalla",
    "yelp2018": "lightgcn ../shared/data/yelp2018",
    "amazon-book": "lightgcn ../shared/data/amazon-book-kgat",
}
KEY_COLUMNS = {
    "quality": ("model", "dataset", "method", "sparsity", "seed", "profile"),
    "convergence": ("model", "dataset", "method", "sparsity", "update_interval", "init_update_ratio", "seed", "profile"),
    "popularity": ("model", "dataset", "method", "sparsity", "seed", "profile"),
    "sensitivity": ("model", "dataset", "method", "sparsity", "update_interval", "init_update_ratio", "seed", "profile"),
}


# run_recbole_dsl.py's exit status after Ctrl-C; a run killed by a signal has a negative one.
INTERRUPTED_EXIT_STATUSES = (130,)


class ExperimentError(Exception):
    """Bad input to the harness, reported on one line."""


# ------------------------------------------------------------------------------ profiles
@dataclass
class Profile:
    """Training settings of a family of comparable runs, with per-model, per-dataset and
    per-experiment overrides (applied in that order, so the experiment's win)."""

    name: str
    seeds: List[int]
    settings: Dict[str, Any]
    datasets: Dict[str, Dict[str, Any]]
    models: Dict[str, Dict[str, Any]]
    experiments: Dict[str, Dict[str, Any]]
    overrides: Dict[str, Any] = field(default_factory=dict)

    def sections(self, experiment: str, model: str, dataset: str) -> List[Dict[str, Any]]:
        return [
            self.settings,
            self.datasets.get(dataset, {}),
            self.models.get(model, {}),
            self.experiments.get(experiment, {}),
            self.overrides,
        ]

    def run_settings(self, experiment: str, model: str, dataset: str) -> Dict[str, Any]:
        settings: Dict[str, Any] = {}
        for section in self.sections(experiment, model, dataset):
            settings.update(section)
        settings.pop("config_files", None)
        return settings

    def config_files(self, experiment: str, model: str, dataset: str) -> List[str]:
        """YAML files named by the profile's ``config_files`` keys (relative to the project),
        read before the run's settings."""
        files = []
        for section in self.sections(experiment, model, dataset):
            files += [str(ROOT / f) for f in section.get("config_files", [])]
        return files

    @property
    def label(self) -> str:
        """The profile as recorded in the CSVs: overridden settings make another profile."""
        if not self.overrides:
            return self.name
        return self.name + "[" + ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items())) + "]"


def load_profile(name: str, overrides: Sequence[str] = ()) -> Profile:
    """``name`` is a file in benchmarks/profiles/ (without .yaml) or a path to a YAML file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
        raise ExperimentError(f"profile {name} not found: use one of {known} or a path to a YAML file")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        raise ExperimentError(f"profile {path}: unknown key {sorted(unknown)[0]!r} (expected {sorted(PROFILE_KEYS)})")
    for key in ("settings", "datasets", "models", "experiments"):
        if not isinstance(data.get(key, {}), dict):
            raise ExperimentError(f"profile {path}: {key} must be a mapping")
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ExperimentError(f"invalid --set {item!r}: expected KEY=VALUE")
        parsed[key] = yaml.safe_load(value)
    return Profile(
        name=path.stem,
        seeds=[int(s) for s in data.get("seeds", [2020])],
        settings=data.get("settings", {}),
        datasets=data.get("datasets", {}),
        models=data.get("models", {}),
        experiments=data.get("experiments", {}),
        overrides=parsed,
    )


# ------------------------------------------------------------------------------ runs
@dataclass
class Run:
    """One training run: a configuration of the one trainer."""

    experiment: str
    model: str
    dataset: str
    method: str
    sparsity: float
    seed: int
    profile: Profile
    dsl_settings: Dict[str, Any] = field(default_factory=dict)  # ΔT and ρ0 where they vary

    def key_values(self) -> Dict[str, Any]:
        values = {
            "model": self.model,
            "dataset": self.dataset,
            "method": self.method,
            "sparsity": self.sparsity,
            "seed": self.seed,
            "profile": self.profile.label,
            **self.dsl_settings,
        }
        return {column: values.get(column, "") for column in KEY_COLUMNS[self.experiment]}

    def key(self) -> Tuple[str, ...]:
        return tuple(cell(v) for v in self.key_values().values())

    @property
    def name(self) -> str:
        extra = "".join(f"-{k}{v}" for k, v in self.dsl_settings.items())
        return f"{self.model}-{self.dataset}-{self.method}-s{self.sparsity}{extra}-seed{self.seed}"

    def config_files(self, run_dir: Path) -> str:
        """``--config_files``: the profile's YAML files, then the run's own settings."""
        files = self.profile.config_files(self.experiment, self.model, self.dataset)
        return " ".join([*files, str(run_dir / "run.yaml")])

    def config(self, data_path: str, run_dir: Path) -> Dict[str, Any]:
        settings = self.profile.run_settings(self.experiment, self.model, self.dataset)
        settings.update(self.dsl_settings)
        settings.update(
            dsl_method=self.method,
            seed=self.seed,
            data_path=str(Path(data_path).resolve()),
            checkpoint_dir=str(run_dir / "saved"),
            results_file=str(run_dir / "result.json"),
        )
        if self.method == "dense":  # dense_small keeps the sparsity whose budget it matches
            settings.pop("sparsity", None)
        else:
            settings["sparsity"] = self.sparsity
        return settings


def cell(value: Any) -> str:
    """A value as the CSV stores it, so keys read back compare equal."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def flat_costs(costs: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The run's cost figures as columns; nested figures as ``<key>_<subkey>``."""
    columns: Dict[str, Any] = {}
    for key, value in (costs or {}).items():
        if isinstance(value, dict):
            columns.update({f"{key}_{sub}": v for sub, v in value.items() if not isinstance(v, (dict, list))})
        elif not isinstance(value, list):
            columns[key] = value
    return columns


def result_row(run: Run, result: Dict[str, Any], settings: Dict[str, Any], seconds: float) -> Dict[str, Any]:
    row = {
        **run.key_values(),
        "epochs": settings.get("epochs", ""),
        "epochs_trained": len(result.get("train_loss", [])),
        "valid_metric": str(settings.get("valid_metric", "")).lower(),
        "best_valid_score": result.get("best_valid_score"),
        **(result.get("test_result") or {}),
        "final_density": result.get("final_density"),
        **flat_costs(result.get("costs")),
        "wall_seconds": round(seconds, 1),
        "error": "",
    }
    if run.experiment == "convergence":
        row["train_loss"] = json.dumps([round(loss, 6) for loss in result.get("train_loss", [])])
    if run.experiment == "quality":
        row["valid_scores"] = json.dumps([[epoch, round(score, 5)] for epoch, score in result.get("valid_scores", [])])
        row["sizes"] = json.dumps((result.get("dense_small") or {}).get("sizes", ""))
    return row


def error_line(log_file: Path) -> str:
    """The run's one-line error (``error: ...``), else the last line of its output."""
    lines = [line.strip() for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return lines[-1] if lines else "no output"


def interrupted_checkpoint(run_dir: Path, config: Dict[str, Any]) -> Optional[Path]:
    """The checkpoint an interrupted invocation of this same configuration left in
    ``run_dir`` (its best model so far, with the training state to go on from), if any.
    The checkpoints of other settings are removed: the run starts over."""
    saved, settings_file = run_dir / "saved", run_dir / "run.yaml"
    checkpoints = list(saved.glob("*.pth"))
    if not checkpoints:
        return None
    if settings_file.is_file():
        with open(settings_file, encoding="utf-8") as f:
            if yaml.safe_load(f) == config:
                return max(checkpoints, key=lambda p: p.stat().st_mtime)
    shutil.rmtree(saved)
    return None


def set_aside_earlier_invocation(run_dir: Path) -> float:
    """Keep the log of an interrupted run's last invocation as ``output.<n>.log`` and add
    its wall seconds (from its settings file's writing to its log's last line) to those of
    the ones before, in ``earlier_seconds``; returns that sum."""
    total_file, log_file = run_dir / "earlier_seconds", run_dir / "output.log"
    total = float(total_file.read_text()) if total_file.is_file() else 0.0
    if log_file.is_file():
        total += max(0.0, log_file.stat().st_mtime - (run_dir / "run.yaml").stat().st_mtime)
        kept = len(list(run_dir.glob("output.*.log"))) + 1
        log_file.rename(run_dir / f"output.{kept}.log")  # its log is kept beside the new one
        total_file.write_text(f"{total:.1f}\n")
    return total


def execute(run: Run, args: argparse.Namespace) -> Tuple[Dict[str, Any], Optional[Path]]:
    """Train one configuration in its own process; returns its CSV row and, when it
    succeeded, its results file. A results file from an earlier, interrupted invocation is
    reused instead of training again; a checkpoint from one is resumed (its wall seconds
    then count every invocation). A run that ends with its own error starts over when
    it is retried."""
    run_dir = Path(args.work_dir).resolve() / run.experiment / slug(run.profile.label) / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run.config(args.data_path, run_dir)
    settings = run.profile.run_settings(run.experiment, run.model, run.dataset)
    results_file, seconds_file = run_dir / "result.json", run_dir / "wall_seconds"
    started = time.perf_counter()
    if not results_file.is_file():
        checkpoint = interrupted_checkpoint(run_dir, config)
        if checkpoint:
            earlier = set_aside_earlier_invocation(run_dir)
        else:  # the run starts over: the invocations before it count for nothing
            earlier = 0.0
            (run_dir / "earlier_seconds").unlink(missing_ok=True)
        with open(run_dir / "run.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(config, f, sort_keys=True)
        command = [
            sys.executable, str(ROOT / "run_recbole_dsl.py"), f"--model={run.model}", f"--dataset={run.dataset}",
            f"--config_files={run.config_files(run_dir)}", *([f"--resume_file={checkpoint}"] if checkpoint else []),
        ]
        if checkpoint:
            print(f"[{run.experiment}] {run.name}: resuming from {checkpoint}", flush=True)
        log_file = run_dir / "output.log"
        with open(log_file, "w", encoding="utf-8") as log:
            try:
                completed = subprocess.run(command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
                failure = f"exit status {completed.returncode}: {error_line(log_file)}" if completed.returncode else None
            except subprocess.TimeoutExpired:
                completed, failure = None, f"timed out after {args.timeout} s"
        if failure:
            if completed is not None and completed.returncode > 0 and completed.returncode not in INTERRUPTED_EXIT_STATUSES:
                shutil.rmtree(run_dir / "saved", ignore_errors=True)  # not interrupted: a retry starts over
            return {**run.key_values(), "epochs": settings.get("epochs", ""), "error": failure,
                    "wall_seconds": round(earlier + time.perf_counter() - started, 1)}, None
        seconds_file.write_text(f"{earlier + time.perf_counter() - started:.1f}\n")
    result = json.loads(results_file.read_text())
    seconds = float(seconds_file.read_text()) if seconds_file.is_file() else math.nan
    if not args.keep_checkpoints and run.experiment != "popularity":
        shutil.rmtree(run_dir / "saved", ignore_errors=True)
    return result_row(run, result, settings, seconds), results_file


# ------------------------------------------------------------------------------ CSV files
@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` (``<path>.lock``), so that experiments for
    different models can run side by side and write to the same files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def append_rows(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    """Append rows; when they bring new columns the file is rewritten with the union of
    the columns (atomically), so a growing set of metrics or cost figures is kept."""
    with locked(path):
        _append_rows(path, rows)


def _append_rows(path: Path, rows: Sequence[Dict[str, Any]]) -> None:
    existing_rows = read_rows(path)
    columns = list(existing_rows[0].keys()) if existing_rows else []
    for row in rows:
        columns += [c for c in row if c not in columns]
    if existing_rows and columns == list(existing_rows[0].keys()):
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=columns).writerows(rows)
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(existing_rows)
        writer.writerows(rows)
    os.replace(tmp, path)


def record_command(args: argparse.Namespace) -> None:
    """Keep the command line of an experiment that ran runs in <results_dir>/commands.txt,
    for docs/results.md to show the commands that made its numbers."""
    threads = os.environ.get("OMP_NUM_THREADS")
    command = " ".join(filter(None, [
        f"OMP_NUM_THREADS={threads}" if threads else "",
        "python benchmarks/experiments.py", shlex.join(args.command_line),
    ]))
    line = f"{args.experiment}\t{command}"
    path = Path(args.results_dir) / "commands.txt"
    with locked(path):
        if line not in (path.read_text(encoding="utf-8").splitlines() if path.is_file() else []):
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")


def recorded_keys(path: Path, experiment: str, failed: bool) -> set:
    """Keys of the configurations in the CSV: succeeded ones, or failed ones."""
    return {
        tuple(row.get(c, "") for c in KEY_COLUMNS[experiment])
        for row in read_rows(path)
        if bool(row.get("error")) == failed
    }


# ------------------------------------------------------------------------------ experiments
def check_dataset(dataset: str, data_path: str) -> None:
    """Stop before any run when a dataset has not been prepared."""
    if dataset == "ml-100k":  # ships inside RecBole
        return
    folder = Path(data_path) / dataset
    if (folder / f"{dataset}.inter").is_file() or (folder / f"{dataset}.train.inter").is_file():
        return
    source = PREPARE_COMMANDS.get(dataset, "FORMAT INPUT")
    raise ExperimentError(
        f"dataset {dataset} not found in {folder}: prepare it with "
        f"`python -m recbole_dsl.prepare {source} --name={dataset} --out={data_path}` or pass --data_path"
    )


def quality_runs(args: argparse.Namespace, profile: Profile) -> List[Run]:
    runs = []
    for dataset in args.datasets:
        for model in args.models:
            for seed in args.seeds or profile.seeds:
                if "dense" in args.methods:
                    runs.append(Run("quality", model, dataset, "dense", 0.0, seed, profile))
                for sparsity in args.sparsities:
                    for method in (m for m in args.methods if m != "dense"):
                        runs.append(Run("quality", model, dataset, method, sparsity, seed, profile))
    return runs


def convergence_runs(args: argparse.Namespace, profile: Profile) -> List[Run]:
    runs = []
    for dataset in args.datasets:
        for model in args.models:
            for seed in args.seeds or profile.seeds:
                runs.append(Run("convergence", model, dataset, "dense", 0.0, seed, profile))
                runs.append(Run("convergence", model, dataset, "rp", args.sparsity, seed, profile))
                for rho in args.init_update_ratios:
                    for interval in args.update_intervals:
                        runs.append(Run("convergence", model, dataset, "dsl", args.sparsity, seed, profile,
                                        {"update_interval": interval, "init_update_ratio": rho}))
    return runs


def popularity_runs(args: argparse.Namespace, profile: Profile) -> List[Run]:
    return [
        Run("popularity", model, dataset, method, sparsity, seed, profile)
        for dataset in args.datasets
        for model in args.models
        for seed in args.seeds or profile.seeds
        for method in args.methods
        for sparsity in args.sparsities
    ]


def popularity_rows(run: Run, row: Dict[str, Any], results_file: Path) -> List[Dict[str, Any]]:
    """Run the popularity analysis on the run's checkpoint: one row per popularity group."""
    result = json.loads(results_file.read_text())
    run_dir = results_file.parent
    command = [
        sys.executable, "-m", "recbole_dsl.analysis", "popularity", f"--checkpoint={result['checkpoint']}",
        f"--dataset={run.dataset}", f"--out={run_dir / 'popularity'}", f"--config_files={run.config_files(run_dir)}",
    ]
    with open(run_dir / "analysis.log", "w", encoding="utf-8") as log:
        completed = subprocess.run(command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, env=python_path_env())
    if completed.returncode:
        return [{**row, "error": f"popularity analysis failed: {error_line(run_dir / 'analysis.log')}"}]
    groups = read_rows(run_dir / "popularity" / "popularity.csv")
    return [{**row, **group} for group in groups]


def python_path_env() -> Dict[str, str]:
    """The project importable from a run's folder, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_experiment(experiment: str, runs: List[Run], args: argparse.Namespace) -> int:
    """Run what the CSV does not hold yet; returns the number of failed runs."""
    csv_file = Path(args.results_dir) / f"{experiment}.csv"
    done = recorded_keys(csv_file, experiment, failed=False)
    failed_before = recorded_keys(csv_file, experiment, failed=True)
    todo = [r for r in runs if r.key() not in done and (args.retry_failed or r.key() not in failed_before)]
    print(f"[{experiment}] {len(runs)} configurations, {len(runs) - len(todo)} already in {csv_file}, {len(todo)} to run",
          flush=True)
    if todo and not args.dry_run:
        record_command(args)
    failures = 0
    for index, run in enumerate(todo, 1):
        label = f"[{experiment} {index}/{len(todo)}] {run.name} ({run.profile.label})"
        if args.dry_run:
            print(f"{label}: would run", flush=True)
            continue
        print(f"{label}: running", flush=True)
        row, results_file = execute(run, args)
        rows = [row]
        if experiment == "popularity" and results_file is not None:
            rows = popularity_rows(run, row, results_file)
        append_rows(csv_file, rows)
        if rows[0]["error"]:
            failures += 1
            print(f"{label}: FAILED: {rows[0]['error']}", flush=True)
        else:
            metric = row.get("valid_metric") or ""
            print(f"{label}: done in {row['wall_seconds']:.0f} s, test {metric} {row.get(metric, '-')}", flush=True)
    return failures


# ------------------------------------------------------------------------------ sensitivity
SENSITIVITY_KEYS = ("sparsity", "update_interval", "init_update_ratio")


def sensitivity_grid_runs(args: argparse.Namespace, profile: Profile) -> List[Run]:
    """``--runner=process``: the sweep file's grid as one run each, without Ray."""
    with open(args.sweep, encoding="utf-8") as f:
        space = (yaml.safe_load(f) or {}).get("search_space") or {}
    if set(space) != set(SENSITIVITY_KEYS) or not all(isinstance(spec, dict) and list(spec) == ["grid"] for spec in space.values()):
        raise ExperimentError(f"sweep {args.sweep}: --runner=process needs a grid over exactly {', '.join(SENSITIVITY_KEYS)}")
    return [
        Run("sensitivity", model, dataset, args.method, float(sparsity), seed, profile,
            {"update_interval": interval, "init_update_ratio": rho})
        for dataset in args.datasets
        for model in args.models
        for seed in args.seeds or profile.seeds
        for sparsity in space["sparsity"]["grid"]
        for interval in space["update_interval"]["grid"]
        for rho in space["init_update_ratio"]["grid"]
    ]


def sensitivity(args: argparse.Namespace, profile: Profile) -> int:
    """The ΔT × ρ0 grid at three sparsities, run by the sweep command (Ray Tune) and
    converted into benchmarks/results/sensitivity.csv; with ``--runner=process`` every
    grid point is a run of its own, as in the quality experiment."""
    if args.runner == "process":
        return run_experiment("sensitivity", sensitivity_grid_runs(args, profile), args)
    if not args.dry_run:
        record_command(args)
    failures = 0
    for dataset in args.datasets:
        for model in args.models:
            for seed in args.seeds or profile.seeds:
                name = f"{model}-{dataset}-seed{seed}" + ("" if args.method == "dsl" else f"-{args.method}")
                run_dir = Path(args.work_dir).resolve() / "sensitivity" / slug(profile.label) / name
                sweep_dir = run_dir / "sweep"  # the sweep's own folder: it resumes an interrupted sweep from it
                run_dir.mkdir(parents=True, exist_ok=True)
                run = Run("sensitivity", model, dataset, args.method, 0.0, seed, profile)
                config = run.config(args.data_path, run_dir)
                for key in ("results_file", "checkpoint_dir", "sparsity"):  # every trial has its own
                    config.pop(key)
                with open(run_dir / "run.yaml", "w", encoding="utf-8") as f:
                    yaml.safe_dump(config, f, sort_keys=True)
                command = [
                    sys.executable, str(ROOT / "run_recbole_dsl.py"), f"--model={model}", f"--dataset={dataset}",
                    f"--config_files={run.config_files(run_dir)}", f"--sweep={Path(args.sweep).resolve()}",
                    f"--sweep_dir={sweep_dir}",
                ]
                label = f"[sensitivity] {name} ({profile.label})"
                if args.dry_run:
                    print(f"{label}: would run {shlex.join(command)}", flush=True)
                    continue
                print(f"{label}: running {shlex.join(command)}", flush=True)
                with open(run_dir / "output.log", "w", encoding="utf-8") as log:
                    completed = subprocess.run(command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT)
                trials = read_rows(sweep_dir / "results.csv")
                if not trials:
                    print(f"{label}: FAILED (exit status {completed.returncode}): {error_line(run_dir / 'output.log')}")
                    failures += 1
                    continue
                # Trials an interruption left PENDING never trained: they are not results.
                pending = sum(1 for trial in trials if trial.get("status") == "PENDING")
                rows = [sensitivity_row(run, trial, config) for trial in trials if trial.get("status") != "PENDING"]
                if pending:
                    print(f"{label}: {pending} trials not run (the sweep was interrupted): run the command again", flush=True)
                    failures += 1
                csv_file = Path(args.results_dir) / "sensitivity.csv"
                keys = {tuple(r.get(c, "") for c in KEY_COLUMNS["sensitivity"]) for r in read_rows(csv_file)}
                new = [r for r in rows if tuple(cell(r[c]) for c in KEY_COLUMNS["sensitivity"]) not in keys]
                append_rows(csv_file, new)
                failures += sum(1 for r in new if r["error"])
                print(f"{label}: {len(trials)} trials, {len(new)} new rows in {csv_file}", flush=True)
    return failures


def sensitivity_row(run: Run, trial: Dict[str, str], config: Dict[str, Any]) -> Dict[str, Any]:
    """A trial of the sweep's results.csv (``trial_id``, ``status``, the swept keys,
    ``best_valid.<metric>``, ``test.<metric>``, ``final_density``, ``costs.<figure>``,
    ``epochs``, ``time_s``, ``error``) as a row of sensitivity.csv."""
    row: Dict[str, Any] = dict(run.key_values())
    for key in ("sparsity", "update_interval", "init_update_ratio"):  # swept, else the profile's
        row[key] = number(trial.get(key, config.get(key, "")))
    row.update(
        trial_id=trial.get("trial_id", ""),
        status=trial.get("status", ""),
        epochs=config.get("epochs", ""),
        epochs_trained=number(trial.get("epochs", "")),
        valid_metric=str(config.get("valid_metric", "")).lower(),
    )
    for column, value in trial.items():
        if column.startswith("best_valid."):
            row["best_valid_score"] = number(value)
        elif column.startswith(("test.", "costs.")):
            row[column.split(".", 1)[1]] = number(value)
    row.update(final_density=number(trial.get("final_density", "")), wall_seconds=number(trial.get("time_s", "")))
    row["error"] = trial.get("error", "") or ("" if trial.get("status") != "ERROR" else "trial failed")
    return row


def number(value: Any) -> Any:
    """CSV text back to a number where it is one."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                return value
    return value


# ------------------------------------------------------------------------------ command line
def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="experiment", required=True)

    def experiment(name: str, help: str, models: Sequence[str], datasets: Sequence[str]) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--profile", default="quick", help="quick, paper, or a path to a profile YAML file")
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a profile setting (recorded as part of the profile name)")
        sub.add_argument("--models", nargs="+", default=list(models))
        sub.add_argument("--datasets", nargs="+", default=list(datasets))
        sub.add_argument("--seeds", nargs="+", type=int, help="default: the profile's seeds")
        sub.add_argument("--data_path", default="data", help="folder holding the prepared datasets")
        sub.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
        sub.add_argument("--work_dir", default=str(ROOT / "benchmarks" / "runs"),
                         help="each run's settings, log, results file (and checkpoint for popularity)")
        sub.add_argument("--timeout", type=float, help="seconds after which a run is stopped and recorded as failed")
        sub.add_argument("--retry_failed", action="store_true", help="run again the configurations recorded as failed")
        sub.add_argument("--keep_checkpoints", action="store_true", help="keep every run's checkpoint")
        sub.add_argument("--dry_run", action="store_true", help="list the runs to do and stop")
        return sub

    quality = experiment("quality", "test metrics against sparsity for every method (Figure 2)", BACKBONES, ["ml-1m"])
    quality.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    quality.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))

    sens = experiment("sensitivity", "ΔT × ρ0 grid at three sparsities through the sweep command (Figure 3)",
                      ["LightGCN"], ["ml-1m"])
    sens.add_argument("--sweep", default=str(ROOT / "properties" / "sweep" / "sensitivity.yaml"))
    sens.add_argument("--method", choices=EXPLORING_METHODS, default="dsl", help="the exploring method swept")
    sens.add_argument("--runner", choices=("ray", "process"), default="ray",
                      help="ray: one sweep through --sweep (Ray Tune); process: one run_recbole_dsl.py process per grid point")

    popularity = experiment("popularity", "density of embedding rows by popularity group (Figure 4)",
                            ["LightGCN"], ["ml-1m"])
    popularity.add_argument("--methods", nargs="+", choices=SPARSE_METHODS, default=["dsl"])
    popularity.add_argument("--sparsities", nargs="+", type=float, default=[0.9])

    convergence = experiment("convergence", "training loss per epoch of dense, rp and dsl (Figure 5)",
                             ["LightGCN"], ["ml-1m"])
    convergence.add_argument("--sparsity", type=float, default=0.9)
    convergence.add_argument("--init_update_ratios", nargs="+", type=float, default=[0.1, 0.5])
    convergence.add_argument("--update_intervals", nargs="+", type=int, default=[50, 200])

    plot = commands.add_parser("plot", help="redraw docs/figures/ and rewrite docs/results.md from the CSVs")
    plot.add_argument("--results_dir", default=str(ROOT / "benchmarks" / "results"))
    plot.add_argument("--figures_dir", default=str(ROOT / "docs" / "figures"))
    plot.add_argument("--report", default=str(ROOT / "docs" / "results.md"))
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)
    try:
        if args.experiment == "plot":
            from results_report import write_report  # beside this script; imports matplotlib

            written = write_report(Path(args.results_dir), Path(args.figures_dir), Path(args.report))
            for path in written:
                print(f"written: {path}")
            return 0
        profile = load_profile(args.profile, args.overrides)
        for dataset in args.datasets:
            check_dataset(dataset, args.data_path)
        if args.experiment == "sensitivity":
            return 1 if sensitivity(args, profile) else 0
        runs = {"quality": quality_runs, "convergence": convergence_runs, "popularity": popularity_runs}[args.experiment]
        return 1 if run_experiment(args.experiment, runs(args, profile), args) else 0
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
