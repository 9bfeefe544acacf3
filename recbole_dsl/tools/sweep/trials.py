"""Running a sweep on Ray Tune: every trial is one :func:`run_recbole_dsl` run in its own
folder, reporting each validation to Ray (and to ASHA when the sweep file asks for it)."""

from __future__ import annotations

import json
import logging
import numbers
import os
import sys
from typing import Any, Dict, List, Optional

import ray
from ray import tune
from ray.air import RunConfig, session
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler

from recbole_dsl.errors import DSLSweepError
from recbole_dsl.quick_start import run_recbole_dsl
from recbole_dsl.tools.sweep.results import FINISHED, STOPPED, SweepOutcome, _error_line, _tested, _write_outcome
from recbole_dsl.tools.sweep.sweep_file import (
    RESOURCES,
    TRIAL_CONFIG_FILE,
    Sweep,
    _is_number,
    _load_base_config,
    _write_yaml,
    check_sweep,
    collect_settings,
    load_sweep_file,
    trial_settings,
)

SWEEP_RECORD = "sweep.json"


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


