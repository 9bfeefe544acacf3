"""Train and evaluate one RecBole model with DSL: RecBole's ``run_recbole`` with the DSL
configuration and trainer, and a JSON summary of the run."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
from logging import getLogger
from typing import Any, Dict, List, Optional

from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, init_logger, init_seed, set_color

from recbole_dsl.config import DSLConfig
from recbole_dsl.trainer import DSLTrainerMixin, create_trainer
from recbole_dsl.utils import DSLConfigError, DSLDatasetError, DSLError

DSL_SETTING_KEYS = (
    "sparsity",
    "update_interval",
    "init_update_ratio",
    "min_update_ratio",
    "update_end",
    "growth",
    "sparse_params",
    "sparsity_distribution",
    "shared_budget",
)


def load_config(
    model: Optional[str] = None,
    dataset: Optional[str] = None,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
) -> DSLConfig:
    """Build the configuration, turning RecBole's errors about bad input into one line."""
    if isinstance(model, str):
        _check_model_name(model)
    for path in config_file_list or []:
        if not os.path.isfile(path):
            raise DSLConfigError(f"config file {path} does not exist")
    try:
        return DSLConfig(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    except DSLError:
        raise
    except (ValueError, KeyError, TypeError, SyntaxError) as e:
        raise DSLConfigError(f"invalid configuration: {e}") from None


def _check_model_name(model: str) -> None:
    try:
        get_model(model)
    except (ValueError, ImportError) as e:
        # RecBole looks in the decision-tree models last, whose import needs lightgbm/xgboost.
        if isinstance(e, ImportError) and model.lower() in ("lightgbm", "xgboost"):
            raise DSLConfigError(f"{model} needs the package {e.name}: pip install {e.name}") from None
        raise DSLConfigError(f"unknown model [{model}]: give the name of a RecBole model, e.g. BPR, LightGCN or SASRec") from None


def load_dataset(config: DSLConfig):
    """RecBole's ``create_dataset``, with a clear error when the dataset cannot be had."""
    try:
        return create_dataset(config)
    except urllib.error.URLError as e:
        raise DSLDatasetError(
            f"dataset [{config['dataset']}] is not in {config['data_path']} and could not be downloaded "
            f"({e.reason}); put its atomic files there or pass --data_path=DIR"
        ) from None
    except ValueError as e:
        if "exist" not in str(e):
            raise
        raise DSLDatasetError(
            f"dataset [{config['dataset']}] not found: {e} Put its atomic files in "
            f"{config['data_path']} or pass --data_path=DIR"
        ) from None


def run_recbole_dsl(
    model: Optional[str] = None,
    dataset: Optional[str] = None,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
) -> Dict[str, Any]:
    """Train ``model`` on ``dataset`` with DSL and evaluate it on the test split.

    Returns the run's summary (also written to ``results_file`` when that is set):
    model, dataset, DSL settings, best validation and test results, the final density and
    every sparsified tensor's size and number of non-zeros.
    """
    config = load_config(model, dataset, config_file_list, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    for note in config.notes:
        logger.info(set_color("DSL", "pink") + f": {note}")

    dataset = load_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)

    trainer = create_trainer(config, model)
    if config["resume_file"]:
        trainer.resume_checkpoint(config["resume_file"])
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    # A non-parametric model is fitted once and kept in memory; RecBole's own checkpoint
    # of it pickles scipy objects that torch >= 2.6 refuses to load by default.
    dsl_applied = isinstance(trainer, DSLTrainerMixin)
    test_result = trainer.evaluate(
        test_data, load_best_model=saved and dsl_applied, show_progress=config["show_progress"]
    )

    result = {
        "model": config["model"],
        "dataset": config["dataset"],
        "dsl": {key: config[key] for key in DSL_SETTING_KEYS},
        "dsl_applied": dsl_applied,
        "best_valid_score": _plain(best_valid_score),
        "best_valid_result": _plain(best_valid_result),
        "test_result": _plain(test_result),
        "final_density": None,
        "sparsified": {},
        "checkpoint": trainer.saved_model_file if saved and dsl_applied else None,
    }
    if dsl_applied:
        result["sparsified"] = trainer.sparsity_summary()
        result["final_density"] = trainer.sparsity.overall_density()
    _log_summary(logger, result)
    if config["results_file"]:
        write_results(config["results_file"], result)
        logger.info(set_color("results written to", "blue") + f": {config['results_file']}")
    return result


def _plain(value: Any) -> Any:
    """numpy scalars and ordered dicts from RecBole into JSON-ready Python values."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return float(value)


def _log_summary(logger, result: Dict[str, Any]) -> None:
    logger.info(set_color("best valid ", "yellow") + f": {result['best_valid_result']}")
    logger.info(set_color("test result", "yellow") + f": {result['test_result']}")
    if result["sparsified"]:
        lines = [set_color("final density", "yellow") + f": {result['final_density']:.4f}"]
        for name, entry in result["sparsified"].items():
            lines.append(f"    {name:<45} {entry['nnz']:>10,d} / {entry['numel']:>10,d} = {entry['nnz'] / entry['numel']:.4f}")
        logger.info("\n".join(lines))


def write_results(path: str, result: Dict[str, Any]) -> None:
    """Write the summary atomically, so an interrupted write never leaves a broken file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)
