"""Sweep files: reading and checking a search space, and the settings shared by every trial.

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
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml
from ray import tune
from recbole.config import Config

from recbole_dsl.config import DSLConfig, ENTRY_POINT_ARGUMENTS, check_known_keys, validate_dsl_config
from recbole_dsl.errors import DSLConfigError, DSLSweepError
from recbole_dsl.quick_start import load_config

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
TRIAL_CONFIG_FILE = "config.yaml"


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

