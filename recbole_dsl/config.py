"""RecBole configuration with the DSL properties and their validation."""

from __future__ import annotations

import difflib
import functools
import importlib
import math
import numbers
import re
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Tuple

import recbole
import torch
import yaml
from recbole.config import Config
from recbole.utils import ModelType

from recbole_dsl.errors import DSLConfigError
from recbole_dsl.methods import METHODS, get_method
from recbole_dsl.sparse import DISTRIBUTIONS, GROWTH_GRADIENTS, PREFIX_GROWTHS

PROPERTIES_DIR = Path(__file__).resolve().parent.parent / "properties"
DSL_PROPERTIES_FILE = PROPERTIES_DIR / "dsl.yaml"
DISTRIBUTED_PROPERTIES_FILE = PROPERTIES_DIR / "distributed.yaml"
DSL_METHODS = tuple(METHODS)
# The methods whose tables can train packed (sparse_storage).
PACKED_METHODS = tuple(name for name, method in METHODS.items() if method.packs)
# The settings that decide how a run sparsifies: reported in its results, and fixed for a
# resumed run by its checkpoint (they set the masks, their budgets and T_end).
DSL_SETTINGS = (
    "dsl_method",
    "sparsity",
    "update_interval",
    "init_update_ratio",
    "min_update_ratio",
    "update_end",
    "update_epochs",
    "prune_epoch_fraction",
    "sparse_params",
    "sparsity_distribution",
    "shared_budget",
    "regrown_keep_values",
    "growth_gradient",
    "prefix_growth",
    "prefix_params",
    "scale_sparse_init",
    "sparse_storage",
)
RECBOLE_DIR = Path(recbole.__file__).resolve().parent
# run_recbole_dsl.py's own arguments, which RecBole's command-line reader also sees.
ENTRY_POINT_ARGUMENTS = ("model", "dataset", "config_files", "sweep", "sweep_dir", "ray_address")
_CONFIG_READ = re.compile(r"""config\[\s*["'](\w+)["']\s*\]""")
# The values of ``learner`` that RecBole's trainer builds; it trains any other with Adam.
LEARNERS = ("adam", "adamw", "sgd", "adagrad", "rmsprop", "sparse_adam")


@functools.lru_cache(maxsize=None)
def property_types() -> Dict[str, FrozenSet[type]]:
    """The types each setting's values have in RecBole's property files (overall, every
    model, every dataset) and in this project's."""
    property_files = [*(RECBOLE_DIR / "properties").rglob("*.yaml"), DSL_PROPERTIES_FILE, DISTRIBUTED_PROPERTIES_FILE]
    for folder in ("model", "dataset", "protocol"):
        property_files += (PROPERTIES_DIR / folder).glob("*.yaml")
    types: Dict[str, set] = {}
    for path in property_files:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f, Loader=Config._build_yaml_loader(None))
        for key, value in (content if isinstance(content, dict) else {}).items():
            types.setdefault(key, set()).add(type(value))
    return {key: frozenset(found) for key, found in types.items()}


@functools.lru_cache(maxsize=None)
def known_keys() -> FrozenSet[str]:
    """Every setting that something reads: the keys of the property files and the
    ``config["key"]`` reads in RecBole's code, for settings such as ``world_size`` that no
    property file lists. RecBole's own Config accepts any key, so a typo would otherwise
    train with the default."""
    keys = set(ENTRY_POINT_ARGUMENTS) | set(property_types())
    for path in RECBOLE_DIR.rglob("*.py"):
        keys.update(_CONFIG_READ.findall(path.read_text(encoding="utf-8", errors="ignore")))
    return frozenset(keys)


def check_value_types(settings: Dict[str, Any], source: str) -> None:
    """A setting whose property-file values are all integers, all numbers or all booleans
    must be one: RecBole would otherwise fail with a traceback deep in training."""
    for key, value in settings.items():
        types = property_types().get(key, frozenset())
        if value is None or not types or type(value) in types:
            continue
        if types == {bool}:
            expected = "True or False"
        elif types == {int}:
            expected = "an integer"
        elif types <= {int, float}:
            if _is_number(value):
                continue
            expected = "a number"
        else:
            continue
        raise DSLConfigError(f"invalid {key}={value!r} in {source}: expected {expected}")


def check_known_keys(keys: Iterable[str], source: str) -> None:
    """Refuse a key that no RecBole model, dataset, evaluation setting or DSL property reads,
    with the nearest known key as a suggestion."""
    known = known_keys()
    for key in keys:
        if key in known:
            continue
        by_case = [k for k in known if k.lower() == str(key).lower()]
        close = by_case or difflib.get_close_matches(str(key), known, n=1, cutoff=0.75)
        hint = f": did you mean {close[0]}?" if close else ": no RecBole model, dataset, evaluation setting or DSL property reads it"
        raise DSLConfigError(f"unknown setting {key} in {source}{hint}")


def _dsl_keys() -> List[str]:
    if not DSL_PROPERTIES_FILE.is_file():
        raise DSLConfigError(
            f"{DSL_PROPERTIES_FILE} is missing: install recbole-dsl from its source tree with `pip install -e .`"
        )
    with open(DSL_PROPERTIES_FILE, encoding="utf-8") as f:
        return list(yaml.safe_load(f))


def import_recbole_models() -> None:
    """Import RecBole's model packages, keeping the process's autograd anomaly setting.

    RecBole's SINE module switches anomaly detection on for the whole process when it is
    imported, and finding any sequential model imports it: every backward pass would then
    check every gradient for NaN (a third of SASRec's training step on CPU). Called before
    a configuration finds its model; later imports find the packages loaded."""
    anomaly_detection = torch.is_anomaly_enabled()
    importlib.import_module("recbole.model.sequential_recommender")
    torch.autograd.set_detect_anomaly(anomaly_detection)


class DSLConfig(Config):
    """RecBole's :class:`~recbole.config.Config` plus ``properties/dsl.yaml``,
    ``properties/dataset/<dataset>.yaml`` and the ``<data_path>/<dataset>/<dataset>.yaml``
    that ``recbole_dsl.prepare`` writes, in that order.

    These are internal defaults, so user files, dicts and the command line
    override them as they override RecBole's own. Cross-entropy sequential models get
    ``train_neg_sample_args: None`` unless the user set it, since RecBole refuses them
    otherwise; the change is kept in :attr:`notes` for the log.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.notes: List[str] = []
        import_recbole_models()
        super().__init__(*args, **kwargs)
        if self.model_class.__module__.startswith("recbole."):  # a model class of the user's may read keys of its own
            for source, settings in (
                ("the config files", self.file_config_dict),
                ("the config dict", self.variable_config_dict),
                ("the command line", self.cmd_config_dict),
            ):
                check_known_keys(settings or {}, source)
                # The DSL properties get their own, more precise, checks below.
                check_value_types({k: v for k, v in (settings or {}).items() if k not in self.parameters["DSL"]}, source)
        validate_training_settings(self.final_config_dict)
        validate_dsl_config(self)
        if get_method(self["dsl_method"]).full_dense and self["sparsity"] != 0:
            if "sparsity" in self.external_config_dict:
                raise DSLConfigError(
                    f"invalid sparsity={self['sparsity']!r} with dsl_method={self['dsl_method']}: a dense model has sparsity 0; "
                    "drop sparsity or choose another dsl_method"
                )
            self.final_config_dict["sparsity"] = 0.0

    def _init_parameters_category(self) -> None:
        super()._init_parameters_category()
        self.parameters["DSL"] = _dsl_keys()

    def _load_internal_config_dict(self, model, model_class, dataset) -> None:
        super()._load_internal_config_dict(model, model_class, dataset)
        self._update_internal_config_dict(DSL_PROPERTIES_FILE)
        self._update_internal_config_dict(DISTRIBUTED_PROPERTIES_FILE)
        # The paper's protocol for the dataset's name, then what the files of a folder written
        # by recbole_dsl.prepare hold (benchmark_filename, load_col), as RecBole adds dataset keys.
        data_path = self.external_config_dict.get("data_path", self.internal_config_dict["data_path"])
        for dataset_file in (PROPERTIES_DIR / "dataset" / f"{dataset}.yaml", Path(data_path) / dataset / f"{dataset}.yaml"):
            if dataset_file.is_file():
                keys = self._update_internal_config_dict(dataset_file) or {}
                self.parameters["Dataset"] += [key for key in keys if key not in self.parameters["Dataset"]]

    def _init_device(self) -> None:
        """RecBole's devices, with the process group of a distributed run: RecBole's NCCL on
        GPUs; gloo and the CPU when there is no GPU to use (RecBole would ask NCCL anyway)."""
        final = self.final_config_dict
        if final["world_size"] == -1:
            final["world_size"] = final["nproc"]
        if "local_rank" not in final or (torch.cuda.is_available() and str(final["gpu_id"]).strip(" ,()")):
            super()._init_device()
            return
        torch.distributed.init_process_group(
            backend="gloo",
            rank=final["local_rank"] + final["offset"],
            world_size=final["world_size"],
            init_method=f"tcp://{final['ip']}:{final['port']}",
        )
        final["device"] = torch.device("cpu")
        final["single_spec"] = False
        if final["local_rank"] != 0:
            final["state"], final["show_progress"], final["verbose"] = "error", False, False

    def _set_default_parameters(self) -> None:
        final = self.final_config_dict
        if (
            final.get("MODEL_TYPE") == ModelType.SEQUENTIAL
            and not hasattr(self.model_class, "input_type")
            and final.get("loss_type") == "CE"
            and final.get("train_neg_sample_args") is not None
            and "train_neg_sample_args" not in self.external_config_dict
        ):
            final["train_neg_sample_args"] = None
            self.notes.append(
                f"{self.model} uses loss_type CE: train_neg_sample_args set to None (RecBole samples no negatives for CE)"
            )
        super()._set_default_parameters()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_training_settings(config: Dict[str, Any]) -> None:
    """Raise :class:`DSLConfigError` for RecBole training settings that RecBole takes
    unchecked: with no epoch or an empty batch a run would test the untrained model, a
    negative learning rate or weight decay fails inside the optimizer with a traceback, an
    unknown learner trains with Adam, and a malformed clip_grad_norm fails mid-training."""
    for key in ("epochs", "train_batch_size", "eval_batch_size"):
        if not _is_integer(config[key]) or config[key] < 1:
            raise DSLConfigError(f"invalid {key}={config[key]!r}: expected an integer >= 1")
    if config.get("embedding_size") is not None and (not _is_integer(config["embedding_size"]) or config["embedding_size"] < 1):
        raise DSLConfigError(f"invalid embedding_size={config['embedding_size']!r}: expected an integer >= 1")
    if not _is_number(config["learning_rate"]) or not config["learning_rate"] >= 0:
        raise DSLConfigError(f"invalid learning_rate={config['learning_rate']!r}: expected a number >= 0")
    if not _is_number(config["weight_decay"]) or not config["weight_decay"] >= 0:
        raise DSLConfigError(f"invalid weight_decay={config['weight_decay']!r}: expected a number >= 0")
    if not isinstance(config["learner"], str) or config["learner"].lower() not in LEARNERS:
        raise DSLConfigError(f"invalid learner={config['learner']!r}: expected {', '.join(LEARNERS[:-1])} or {LEARNERS[-1]}")
    clip = config["clip_grad_norm"]
    if clip is not None and not (isinstance(clip, dict) and _is_number(clip.get("max_norm")) and all(isinstance(k, str) for k in clip)):
        raise DSLConfigError(
            f"invalid clip_grad_norm={clip!r}: expected ~ (None) or a mapping with max_norm, e.g. {{'max_norm': 5, 'norm_type': 2}}"
        )


def validate_dsl_config(config: Dict[str, Any]) -> None:
    """Raise :class:`DSLConfigError` with a one-line reason for any invalid DSL property."""

    def fail(key: str, expected: str) -> None:
        raise DSLConfigError(f"invalid {key}={config[key]!r}: expected {expected}")

    if config["dsl_method"] not in DSL_METHODS:
        fail("dsl_method", ", ".join(DSL_METHODS[:-1]) + " or " + DSL_METHODS[-1])
    if not _is_number(config["sparsity"]) or not 0.0 <= config["sparsity"] < 1.0:
        fail("sparsity", "a number in [0, 1)")
    if not _is_integer(config["update_interval"]) or config["update_interval"] < 1:
        fail("update_interval", "an integer >= 1 (for a static random mask use dsl_method=rp)")
    if not _is_number(config["init_update_ratio"]) or not 0.0 < config["init_update_ratio"] <= 1.0:
        fail("init_update_ratio", "a number in (0, 1]")
    if not _is_number(config["min_update_ratio"]) or not 0.0 <= config["min_update_ratio"] <= config["init_update_ratio"]:
        fail("min_update_ratio", "a number in [0, init_update_ratio]")
    if not _is_number(config["update_end"]) or not 0.0 < config["update_end"] <= 1.0:
        fail("update_end", "a number in (0, 1]")
    update_epochs = config["update_epochs"]
    if update_epochs is not None and (not _is_integer(update_epochs) or update_epochs < 1):
        fail("update_epochs", "an integer >= 1, or ~ (None) for update_end alone")
    if not _is_number(config["prune_epoch_fraction"]) or not 0.0 < config["prune_epoch_fraction"] < 1.0:
        fail("prune_epoch_fraction", "a number in (0, 1)")
    if get_method(config["dsl_method"]).dense_start:
        _check_validation_after_pruning(config)
    if config["sparsity_distribution"] is not None and config["sparsity_distribution"] not in DISTRIBUTIONS:
        fail("sparsity_distribution", " or ".join(DISTRIBUTIONS) + " (or ~ for the method's own)")
    if not isinstance(config["shared_budget"], bool):
        fail("shared_budget", "True or False")
    if not isinstance(config["regrown_keep_values"], bool):
        fail("regrown_keep_values", "True or False")
    if not isinstance(config["scale_sparse_init"], bool):
        fail("scale_sparse_init", "True or False")
    if not isinstance(config["fused_optimizer"], bool):
        fail("fused_optimizer", "True or False")
    if not isinstance(config["sparse_storage"], bool):
        fail("sparse_storage", "True or False")
    if config["sparse_storage"] and config["dsl_method"] not in PACKED_METHODS:
        raise DSLConfigError(
            f"sparse_storage=True trains dsl_method {', '.join(PACKED_METHODS[:-1])} or {PACKED_METHODS[-1]}, "
            f"not {config['dsl_method']}: it trains dense tables (dense, dense_small, mp) or grows by the "
            "optimizer's momentum, which a packed table keeps for its active values only (dsl_momentum)"
        )
    if config["growth_gradient"] is not None and config["growth_gradient"] not in GROWTH_GRADIENTS:
        fail("growth_gradient", ", ".join(GROWTH_GRADIENTS[:-1]) + f" or {GROWTH_GRADIENTS[-1]} (or ~ for the method's own)")
    if config["prefix_growth"] not in PREFIX_GROWTHS:
        fail("prefix_growth", " or ".join(PREFIX_GROWTHS))
    _validate_selection(config, "sparse_params", ("all", "embeddings"), allow_empty=False)
    _validate_selection(config, "prefix_params", ("embeddings",), allow_empty=True)
    if not _is_integer(config["cost_batches"]) or config["cost_batches"] < 1:
        fail("cost_batches", "an integer >= 1")
    _validate_distributed(config)
    if config["sparse_storage"] and max(config["nproc"], config["world_size"]) > 1:
        raise DSLConfigError("sparse_storage=True trains in one process: a distributed run keeps its tables dense with masks")
    for key in ("results_file", "resume_file"):
        if config[key] is not None and not isinstance(config[key], str):
            fail(key, "a file path")


def _validate_selection(config: Dict[str, Any], key: str, names: Tuple[str, ...], allow_empty: bool) -> None:
    """A selection of tensors: one of ``names`` or a list of name patterns (regular expressions)."""
    selection = config[key]
    if isinstance(selection, (list, tuple)) and (selection or allow_empty) and all(isinstance(p, str) for p in selection):
        for pattern in selection:
            try:
                re.compile(pattern)
            except re.error as e:
                raise DSLConfigError(f"invalid {key} pattern {pattern!r}: {e}") from None
    elif selection not in names:
        raise DSLConfigError(f"invalid {key}={selection!r}: expected {', '.join(names)} or a list of name patterns")


def _validate_distributed(config: Dict[str, Any]) -> None:
    if not _is_integer(config["nproc"]) or config["nproc"] < 1:
        raise DSLConfigError(f"invalid nproc={config['nproc']!r}: expected an integer >= 1")
    if not _is_integer(config["offset"]) or config["offset"] < 0:
        raise DSLConfigError(f"invalid offset={config['offset']!r}: expected an integer >= 0")
    world_size = config["nproc"] if config["world_size"] == -1 else config["world_size"]
    if not _is_integer(config["world_size"]) or world_size < config["nproc"] + config["offset"]:
        raise DSLConfigError(
            f"invalid world_size={config['world_size']!r}: expected -1 (nproc) or an integer >= offset + nproc "
            f"({config['offset']} + {config['nproc']}), the processes on all machines"
        )
    if not _is_integer(config["port"]) or not 0 < config["port"] < 65536:
        raise DSLConfigError(f"invalid port={config['port']!r}: expected a TCP port number")


def mp_prune_epoch(epochs: int, prune_epoch_fraction: float) -> int:
    """Number of dense epochs before MP prunes: round(fraction * epochs), at least 1."""
    return max(1, math.floor(prune_epoch_fraction * epochs + 0.5))


def _check_validation_after_pruning(config: Dict[str, Any]) -> None:
    """MP's best checkpoint must be sparse, so some validation has to follow the prune."""
    epochs, eval_step = config["epochs"], config["eval_step"]
    if not isinstance(epochs, int) or not isinstance(eval_step, int) or eval_step <= 0:
        return  # RecBole saves every epoch without validation, so the last one is kept
    prune_epoch = mp_prune_epoch(epochs, config["prune_epoch_fraction"])
    last_validation = epochs // min(eval_step, epochs) * min(eval_step, epochs)
    if last_validation < prune_epoch:
        raise DSLConfigError(
            f"dsl_method={config['dsl_method']} prunes after epoch {prune_epoch} of {epochs} but validates last after epoch "
            f"{last_validation} (eval_step={eval_step}): lower prune_epoch_fraction or eval_step"
        )
