"""Hyperparameter sweeps with Ray Tune: every trial is one :func:`run_recbole_dsl` run.

A sweep file (YAML) holds a search space over any configuration key, the number of
samples, the metric to optimise, an optional ASHA scheduler fed with each validation,
the resources of a trial and settings shared by every trial::

    search_space:
      sparsity: {grid: [0.8, 0.9]}
      learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
    num_samples: 2
    metric: ndcg@10
    scheduler: {asha: {grace_period: 5, reduction_factor: 2}}
    resources_per_trial: {cpu: 1, gpu: 0}
    config: {epochs: 50}

:func:`run_sweep` checks the file before Ray starts, runs the trials on a local Ray
instance or on a Ray cluster, and writes ``results.csv`` and ``best_config.yaml`` into the
sweep directory. That directory is also Ray's experiment directory, so running the same
sweep again resumes it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import ray
import yaml
from ray import cloudpickle, tune
from ray.air import RunConfig, session
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler
from recbole.config import Config

from recbole_dsl.config import DSLConfig, ENTRY_POINT_ARGUMENTS, check_known_keys, validate_dsl_config
from recbole_dsl.quick_start import load_config, run_recbole_dsl
from recbole_dsl.utils import DSLConfigError, DSLSweepError

SWEEP_FILE_KEYS = ("search_space", "num_samples", "metric", "scheduler", "resources_per_trial", "config")
# Distributions that list their values.
VALUE_LISTS: Dict[str, Callable] = {"grid": tune.grid_search, "choice": tune.choice}
# Distributions over a range: Ray's sampler, its arguments, integer bounds, lower bound > 0.
RANGES: Dict[str, Tuple[Callable, Tuple[str, ...], bool, bool]] = {
    "uniform": (tune.uniform, ("low", "high"), False, False),
    "quniform": (tune.quniform, ("low", "high", "q"), False, False),
    "loguniform": (tune.loguniform, ("low", "high"), False, True),
    "qloguniform": (tune.qloguniform, ("low", "high", "q"), False, True),
    "randint": (tune.randint, ("low", "high"), True, False),
    "qrandint": (tune.qrandint, ("low", "high", "q"), True, False),
}
ASHA_OPTIONS = ("grace_period", "reduction_factor")
RESOURCES = ("cpu", "gpu")
# Settings the sweep decides for each trial, with the reason a user cannot set them.
SWEEP_CONTROLLED_KEYS = {
    "checkpoint_dir": "each trial saves its checkpoints in its own folder under --sweep_dir",
    "gpu_id": "Ray assigns the GPUs: set resources_per_trial.gpu",
    "results_file": "the sweep writes results.csv",
    "resume_file": "a sweep trains every trial from the start",
}
# Settings that hold paths: made absolute, since trials run in their own folders.
PATH_KEYS = ("data_path", "dataset_save_path", "dataloaders_save_path")
SWEEP_RECORD = "sweep.json"
RESULTS_FILE = "results.csv"
BEST_CONFIG_FILE = "best_config.yaml"
TRIAL_CONFIG_FILE = "config.yaml"
FINISHED, STOPPED = "TERMINATED", "STOPPED"


@dataclass
class Sweep:
    """A checked sweep file."""

    path: str
    search_space: Dict[str, Dict[str, Any]]
    num_samples: int = 1
    metric: Optional[str] = None
    asha: Optional[Dict[str, Any]] = None
    resources: Dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    config: Dict[str, Any] = field(default_factory=dict)

    def param_space(self) -> Dict[str, Any]:
        """The search space as Ray Tune's ``param_space``."""
        space = {}
        for key, spec in self.search_space.items():
            name, arguments = _distribution(spec)
            space[key] = VALUE_LISTS[name](arguments) if name in VALUE_LISTS else RANGES[name][0](*arguments)
        return space

    def total_trials(self) -> int:
        grid = [len(spec["grid"]) for spec in self.search_space.values() if "grid" in spec]
        return self.num_samples * math.prod(grid)


@dataclass
class SweepOutcome:
    """What a finished (or interrupted) sweep left in its directory."""

    rows: List[Dict[str, Any]]
    results_file: str
    best_config_file: Optional[str]
    complete: bool


# ------------------------------------------------------------------ sweep file
def _recbole_yaml_loader():
    """RecBole's YAML loader (it reads ``1e-4`` as a number), so that sweep files type their
    values exactly as RecBole's config files do."""
    return Config._build_yaml_loader(Config.__new__(Config))


def _read_yaml(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        try:
            return yaml.load(f.read(), Loader=_recbole_yaml_loader())
        except yaml.YAMLError as e:
            reason = " ".join(str(e).split())
            raise DSLSweepError(f"{path} is not valid YAML: {reason}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _distribution(spec: Dict[str, Any]) -> Tuple[str, Any]:
    """The one ``name: arguments`` pair of a checked search-space entry."""
    return next(iter(spec.items()))


def load_sweep_file(path: str) -> Sweep:
    """Read and check a sweep file; raise :class:`DSLSweepError` naming the offending key."""
    if not os.path.isfile(path):
        raise DSLSweepError(f"sweep file {path} does not exist")
    content = _read_yaml(path)

    def fail(key: str, problem: str) -> None:
        raise DSLSweepError(f"sweep file {path}: {key}: {problem}")

    if not isinstance(content, dict):
        raise DSLSweepError(f"sweep file {path}: expected a mapping with the keys {', '.join(SWEEP_FILE_KEYS)}")
    for key in content:
        if key not in SWEEP_FILE_KEYS:
            fail(str(key), f"unknown key; expected one of {', '.join(SWEEP_FILE_KEYS)}")
    search_space = content.get("search_space")
    if not isinstance(search_space, dict) or not search_space:
        fail("search_space", "expected a mapping of settings to distributions, e.g. sparsity: {grid: [0.8, 0.9]}")
    for key, spec in search_space.items():
        _check_distribution(f"search_space.{key}", spec, fail)
    sweep = Sweep(path=path, search_space=search_space)

    num_samples = content.get("num_samples", 1)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        fail("num_samples", f"expected an integer >= 1, got {num_samples!r}")
    sweep.num_samples = num_samples

    metric = content.get("metric")
    if metric is not None and (not isinstance(metric, str) or not metric.strip()):
        fail("metric", f"expected a metric name such as ndcg@10, got {metric!r}")
    sweep.metric = metric

    scheduler = content.get("scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, dict) or list(scheduler) != ["asha"]:
            fail("scheduler", "expected {asha: {grace_period: N, reduction_factor: F}} (ASHA is the one scheduler offered)")
        options = scheduler["asha"] or {}
        if not isinstance(options, dict):
            fail("scheduler.asha", f"expected a mapping of {', '.join(ASHA_OPTIONS)}")
        for key in options:
            if key not in ASHA_OPTIONS:
                fail(f"scheduler.asha.{key}", f"unknown option; expected {' or '.join(ASHA_OPTIONS)}")
        grace_period = options.get("grace_period", 1)
        if not isinstance(grace_period, int) or isinstance(grace_period, bool) or grace_period < 1:
            fail("scheduler.asha.grace_period", f"expected an integer >= 1 (epochs), got {grace_period!r}")
        reduction_factor = options.get("reduction_factor", 4)
        if not _is_number(reduction_factor) or reduction_factor <= 1:
            fail("scheduler.asha.reduction_factor", f"expected a number > 1, got {reduction_factor!r}")
        sweep.asha = {"grace_period": grace_period, "reduction_factor": reduction_factor}

    resources = content.get("resources_per_trial") or {}
    if not isinstance(resources, dict):
        fail("resources_per_trial", "expected a mapping such as {cpu: 1, gpu: 0}")
    for key, value in resources.items():
        if key not in RESOURCES:
            fail(f"resources_per_trial.{key}", "unknown resource; expected cpu or gpu")
        if not _is_number(value) or value < 0 or (key == "cpu" and value == 0):
            fail(f"resources_per_trial.{key}", f"expected a number {'> 0' if key == 'cpu' else '>= 0'}, got {value!r}")
    sweep.resources.update(resources)

    config = content.get("config") or {}
    if not isinstance(config, dict):
        fail("config", "expected a mapping of settings shared by every trial")
    for key in config:
        if key in search_space:
            fail(f"config.{key}", "also in search_space; keep it in one of them")
    for source, keys in (("search_space", search_space), ("config", config)):
        for key in keys:
            if key in ("model", "dataset"):
                fail(f"{source}.{key}", f"give the {key} with --{key}")
            if key in SWEEP_CONTROLLED_KEYS and keys[key] is not None:
                fail(f"{source}.{key}", f"cannot be set in a sweep: {SWEEP_CONTROLLED_KEYS[key]}")
    sweep.config = config
    if sweep.asha and "epochs" in search_space:
        fail("search_space.epochs", "cannot be swept together with the ASHA scheduler, whose budget is epochs")
    return sweep


def _check_distribution(key: str, spec: Any, fail: Callable[[str, str], None]) -> None:
    names = ", ".join([*VALUE_LISTS, *RANGES])
    if not isinstance(spec, dict) or len(spec) != 1:
        fail(key, f"expected one distribution such as {{grid: [...]}} or {{uniform: [low, high]}}; distributions: {names}")
    name, arguments = _distribution(spec)
    if name in VALUE_LISTS:
        if not isinstance(arguments, list) or not arguments:
            fail(f"{key}.{name}", f"expected a non-empty list of values, got {arguments!r}")
        return
    if name not in RANGES:
        fail(key, f"unknown distribution {name!r}; expected one of {names}")
    _, parameters, integer, positive = RANGES[name]
    if not isinstance(arguments, list) or len(arguments) != len(parameters):
        fail(f"{key}.{name}", f"expected [{', '.join(parameters)}], got {arguments!r}")
    kind = "integers" if integer else "numbers"
    if not all(_is_number(a) and (not integer or isinstance(a, int)) for a in arguments):
        fail(f"{key}.{name}", f"expected {kind} [{', '.join(parameters)}], got {arguments!r}")
    low, high = arguments[:2]
    if low >= high:
        fail(f"{key}.{name}", f"expected low < high, got {arguments!r}")
    if positive and low <= 0:
        fail(f"{key}.{name}", f"expected low > 0 for a log scale, got {arguments!r}")
    if len(arguments) == 3 and arguments[2] <= 0:
        fail(f"{key}.{name}", f"expected q > 0, got {arguments!r}")


# ------------------------------------------------------------------ settings
def command_line_settings() -> Dict[str, Any]:
    """The ``--key=value`` settings of the command line, parsed and typed as RecBole's
    :class:`~recbole.config.Config` parses them, without run_recbole_dsl.py's own arguments."""
    settings = Config._load_cmd_line(Config.__new__(Config))
    return {key: value for key, value in settings.items() if key not in ENTRY_POINT_ARGUMENTS}


def collect_settings(sweep: Sweep, config_file_list: Optional[List[str]] = None) -> Dict[str, Any]:
    """The settings shared by every trial, in RecBole's order: config files, then the sweep's
    ``config``, then the command line. Paths are made absolute, since trials run in their own
    folders (and, on a cluster, on other machines)."""
    sources: List[Tuple[str, Dict[str, Any]]] = []
    for path in config_file_list or []:
        if not os.path.isfile(path):
            raise DSLConfigError(f"config file {path} does not exist")
        content = _read_yaml(path) or {}
        if not isinstance(content, dict):
            raise DSLConfigError(f"config file {path}: expected a mapping of settings")
        sources.append((path, content))
    sources.append((f"sweep file {sweep.path}", sweep.config))
    command_line = command_line_settings()
    sources.append(("the command line", command_line))

    settings: Dict[str, Any] = {}
    for source, content in sources:
        for key, value in content.items():
            if key in SWEEP_CONTROLLED_KEYS and value is not None:
                raise DSLSweepError(f"{source} sets {key}, which a sweep decides: {SWEEP_CONTROLLED_KEYS[key]}")
        settings.update(content)
    for key in sweep.search_space:
        if key in command_line:
            raise DSLSweepError(f"--{key} is given on the command line and swept in {sweep.path}: keep one of them")
    for key in ("model", "dataset", *SWEEP_CONTROLLED_KEYS):
        settings.pop(key, None)
    for key in PATH_KEYS:
        if isinstance(settings.get(key), str):
            settings[key] = os.path.abspath(settings[key])
    if sweep.metric:
        valid_metric = settings.get("valid_metric")
        if valid_metric is not None and str(valid_metric).lower() != sweep.metric.lower():
            raise DSLSweepError(
                f"metric {sweep.metric} of {sweep.path} differs from valid_metric={valid_metric}: trials stop early "
                "and keep their best checkpoint by the sweep's metric, so set only one of them"
            )
        settings["valid_metric"] = sweep.metric
    return settings


def _load_base_config(model: str, dataset: str, settings: Dict[str, Any]) -> DSLConfig:
    """The configuration every trial starts from, which checks the shared settings."""
    # RecBole's Config sets CUDA_VISIBLE_DEVICES from gpu_id; the driver keeps its own, so
    # that a local Ray instance sees every GPU of the machine.
    visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        return load_config(model, dataset, config_dict=dict(settings))
    finally:
        if visible_devices is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices


def check_sweep(sweep: Sweep, config: DSLConfig) -> Tuple[str, str]:
    """Check the sweep against the trials' configuration; return Ray's metric and mode.

    The metric is the trials' ``valid_metric`` (lower-cased, as RecBole reports it); the mode
    follows from it as RecBole's early stopping does. Every listed value and every range bound
    of the search space, and one sampled value, must pass the DSL checks.
    """
    metric = str(config["valid_metric"]).lower()
    metric_name, _, k = metric.partition("@")
    topk = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    if metric_name not in [m.lower() for m in config["metrics"]] or (k and (not k.isdigit() or int(k) not in topk)):
        raise DSLSweepError(
            f"sweep file {sweep.path}: metric: {metric} is not computed by the runs (metrics {config['metrics']}, topk {topk})"
        )
    if sweep.asha and sweep.asha["grace_period"] > config["epochs"]:
        raise DSLSweepError(
            f"sweep file {sweep.path}: scheduler.asha.grace_period: {sweep.asha['grace_period']} exceeds epochs={config['epochs']}"
        )
    try:
        check_known_keys(sweep.search_space, f"sweep file {sweep.path}: search_space")
    except DSLConfigError as e:
        raise DSLSweepError(str(e)) from None
    base = dict(config.final_config_dict)
    space = sweep.param_space()
    for key, spec in sweep.search_space.items():
        name, arguments = _distribution(spec)
        values = list(arguments) if name in VALUE_LISTS else [arguments[0], arguments[1], space[key].sample()]
        for value in values:
            try:
                validate_dsl_config({**base, key: value})
            except DSLConfigError as e:
                raise DSLSweepError(f"sweep file {sweep.path}: search_space.{key}: {e}") from None
    return metric, "max" if config["valid_metric_bigger"] else "min"


# ------------------------------------------------------------------ trials
def trial_settings(settings: Dict[str, Any], sampled: Dict[str, Any]) -> Dict[str, Any]:
    """Everything a trial runs with: the shared settings and its sampled values."""
    return _plain_yaml({**settings, **sampled})


def _plain_yaml(value: Any) -> Any:
    """Tuples (RecBole's command line makes them) as lists, so that ``yaml.safe_dump`` takes them."""
    if isinstance(value, dict):
        return {str(k): _plain_yaml(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_yaml(v) for v in value]
    return value


def _write_yaml(path: str, settings: Dict[str, Any], header: str = "") -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(header)
        yaml.safe_dump(settings, f, sort_keys=False, allow_unicode=True)
    os.replace(tmp, path)


class _ValidationReporter:
    """RecBole's ``callback_fn``: reports each validation to Ray, which feeds ASHA."""

    def __init__(self, metric: str, mode: str) -> None:
        self.metric, self.better = metric, max if mode == "max" else min
        self.epoch = 0
        self.best: Optional[float] = None

    def __call__(self, epoch_idx: int, valid_score: float) -> None:
        self.epoch = epoch_idx + 1
        score = float(valid_score)
        self.best = score if self.best is None else self.better(self.best, score)
        session.report({self.metric: score, f"best_valid.{self.metric}": self.best, "epoch": self.epoch})


def run_trial(sampled: Dict[str, Any], model: str, dataset: str, settings: Dict[str, Any], metric: str, mode: str) -> None:
    """One trial, in a Ray worker whose working directory is the trial's folder.

    It writes its settings to ``config.yaml`` in that folder and trains from that file, as
    ``run_recbole_dsl.py --config_files=...`` does with the best configuration. RecBole's log
    and the checkpoints stay in the folder.
    """
    sys.argv = sys.argv[:1]  # RecBole's Config would read the Ray worker's own arguments as settings
    trial_dir = session.get_trial_dir()
    config_file = os.path.join(trial_dir, TRIAL_CONFIG_FILE)
    _write_yaml(config_file, trial_settings(settings, sampled))
    placement = {
        "checkpoint_dir": os.path.join(trial_dir, "saved"),
        "gpu_id": ",".join(str(gpu) for gpu in ray.get_gpu_ids()),  # empty: the CPU
    }
    reporter = _ValidationReporter(metric, mode)
    result = run_recbole_dsl(model, dataset, config_file_list=[config_file], config_dict=placement, callback_fn=reporter)
    session.report(final_report(result, metric, reporter.epoch))


def final_report(result: Dict[str, Any], metric: str, epoch: int) -> Dict[str, Any]:
    """The last result of a trial: plain numbers only, and always the metric, which Ray checks."""
    report: Dict[str, Any] = {metric: result["best_valid_score"], f"best_valid.{metric}": result["best_valid_score"], "epoch": epoch}
    report.update({f"test.{key}": value for key, value in (result["test_result"] or {}).items()})
    if result["final_density"] is not None:
        report["final_density"] = float(result["final_density"])
    costs = result.get("costs") or {}
    report.update({f"costs.{key}": _plain_number(value) for key, value in costs.items() if _is_number(value)})
    return report


def _plain_number(value: numbers.Real) -> Any:
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _trial_dirname(trial: Trial) -> str:
    """Trial folders are named by the trial id that results.csv shows."""
    return trial.trial_id


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


def _format_values(trial: Trial, keys: List[str]) -> str:
    return " ".join(f"{key}={trial.config.get(key)}" for key in keys)


class TrialProgress(Callback):
    """Prints one line per finished trial: its values and best validation score, or its error."""

    def __init__(self, metric: str, swept_keys: List[str]) -> None:
        self.metric, self.swept_keys = metric, swept_keys
        self.total: Optional[int] = None
        self._failed: List[Trial] = []

    def setup(self, total_num_samples: Optional[int] = None, **info) -> None:
        self.total = total_num_samples

    def on_trial_complete(self, iteration: int, trials: List[Trial], trial: Trial, **info) -> None:
        best = trial.last_result.get(f"best_valid.{self.metric}")
        outcome = f"best valid {self.metric} {best:.4f}" if best is not None else "no validation"
        status = FINISHED if _tested(trial.last_result) else f"{STOPPED} by ASHA after epoch {trial.last_result.get('epoch')}"
        self._print(trials, trial, f"{status}, {outcome}")

    def on_trial_error(self, iteration: int, trials: List[Trial], trial: Trial, **info) -> None:
        self._failed.append(trial)  # Ray writes the error file right after this call

    def on_step_end(self, iteration: int, trials: List[Trial], **info) -> None:
        while self._failed:
            trial = self._failed.pop(0)
            self._print(trials, trial, f"{Trial.ERROR}: {_error_line(trial)}")

    def on_experiment_end(self, trials: List[Trial], **info) -> None:
        self.on_step_end(0, trials)

    def _print(self, trials: List[Trial], trial: Trial, outcome: str) -> None:
        # Ray sets a completed trial's status after the callbacks, and failed trials wait for
        # their error file: count the trial itself, and no failure that is still to be printed.
        done = sum(t is trial or (t.status in (Trial.TERMINATED, Trial.ERROR) and t not in self._failed) for t in trials)
        print(f"[{done}/{self.total}] trial {trial.trial_id} {_format_values(trial, self.swept_keys)}: {outcome}", flush=True)


# ------------------------------------------------------------------ results
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


# ------------------------------------------------------------------ the sweep
def _sweep_record(model: str, dataset: str, sweep: Sweep, settings: Dict[str, Any]) -> Dict[str, Any]:
    record = {
        "model": model,
        "dataset": dataset,
        "search_space": sweep.search_space,
        "num_samples": sweep.num_samples,
        "scheduler": sweep.asha,
        "resources_per_trial": sweep.resources,
        "settings": settings,
    }
    return json.loads(json.dumps(record, default=str))


def _prepare_sweep_dir(sweep_dir: str, record: Dict[str, Any]) -> bool:
    """Whether ``sweep_dir`` holds this sweep, to resume; refuse a folder that holds anything else."""
    record_file = os.path.join(sweep_dir, SWEEP_RECORD)
    if tune.Tuner.can_restore(sweep_dir) and os.path.isfile(record_file):
        with open(record_file, encoding="utf-8") as f:
            saved = json.load(f)
        changed = [key for key in record if saved.get(key) != record[key]]
        if changed:
            raise DSLSweepError(
                f"{sweep_dir} holds a sweep with other {', '.join(changed)}: run its own command again "
                "to resume it, or choose a new --sweep_dir"
            )
        return True
    if os.path.isdir(sweep_dir) and any(name != SWEEP_RECORD for name in os.listdir(sweep_dir)):
        raise DSLSweepError(f"{sweep_dir} exists and holds no sweep to resume: choose a new or empty --sweep_dir")
    os.makedirs(sweep_dir, exist_ok=True)
    with open(record_file, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    return False


def _start_ray(ray_address: Optional[str], resources: Dict[str, float]) -> None:
    """Join the Ray cluster at ``ray_address``, or start a local instance with this machine's
    CPUs; then check that the cluster can hold one trial."""
    quiet = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if ray_address:
        try:
            ray.init(address=ray_address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DSLSweepError(
                f"cannot join the Ray cluster at {ray_address} ({reason}): start one with `ray start --head` "
                "or leave out --ray_address"
            ) from None
    else:
        ray.init(num_cpus=os.cpu_count(), **quiet)
    available = ray.cluster_resources()
    for resource in RESOURCES:
        wanted, present = resources[resource], available.get(resource.upper(), 0)
        if wanted > present:
            where = f"the Ray cluster at {ray_address}" if ray_address else "this machine"
            raise DSLSweepError(
                f"resources_per_trial asks for {wanted:g} {resource.upper()} per trial but {where} has {present:g}: "
                "lower resources_per_trial" + (" or join a cluster with GPUs (--ray_address)" if resource == "gpu" else "")
            )


def run_sweep(
    model: str,
    dataset: str,
    sweep_file: str,
    sweep_dir: str,
    config_file_list: Optional[List[str]] = None,
    ray_address: Optional[str] = None,
) -> SweepOutcome:
    """Run (or resume) the sweep of ``sweep_file`` for ``model`` on ``dataset``.

    The sweep file and every shared setting are checked before Ray starts. Each trial trains
    in ``sweep_dir/<trial id>``; a failed trial is recorded and the others go on. At the end
    ``sweep_dir/results.csv`` holds one row per trial and ``sweep_dir/best_config.yaml`` the
    best finished trial's settings.
    """
    sweep = load_sweep_file(sweep_file)
    settings = collect_settings(sweep, config_file_list)
    config = _load_base_config(model, dataset, settings)
    metric, mode = check_sweep(sweep, config)
    settings.setdefault("data_path", os.path.abspath(config.internal_config_dict["data_path"]))
    sweep_dir = os.path.abspath(sweep_dir)
    resume = _prepare_sweep_dir(sweep_dir, _sweep_record(model, dataset, sweep, settings))

    swept_keys = list(sweep.search_space)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, model=model, dataset=dataset, settings=settings, metric=metric, mode=mode),
        dict(sweep.resources),
    )
    # Ray's new console output prints its own tables; the sweep prints a line per trial.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        _start_ray(ray_address, sweep.resources)
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # a failed trial's traceback is in its error.txt
        action = "resuming" if resume else "running"
        print(f"{action} a sweep of {sweep.total_trials()} trials of {model} on {dataset}, {mode}imising {metric}, in {sweep_dir}", flush=True)
        if resume:
            tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=False)
        else:
            scheduler = None
            if sweep.asha:
                # One report per validation, with the epoch as ASHA's clock. A trial that reaches
                # the last epoch is never stopped: it still has to be tested.
                scheduler = ASHAScheduler(time_attr="epoch", max_t=config["epochs"], stop_last_trials=False, **sweep.asha)
            tuner = tune.Tuner(
                trainable,
                param_space=sweep.param_space(),
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    num_samples=sweep.num_samples,
                    scheduler=scheduler,
                    reuse_actors=False,  # a fresh process per trial: RecBole's logger and seeds are per process
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=RunConfig(
                    name=os.path.basename(sweep_dir),
                    storage_path=os.path.dirname(sweep_dir),
                    callbacks=[TrialProgress(metric, swept_keys)],
                    verbose=0,
                ),
            )
        tuner.fit()
    finally:
        ray.shutdown()
    return _write_outcome(model, dataset, sweep_dir, settings, swept_keys, metric, mode)


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
