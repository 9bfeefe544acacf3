"""Train and evaluate one RecBole model with DSL: RecBole's ``run_recbole`` with the DSL
configuration and trainer, and a JSON summary of the run."""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import warnings
from contextlib import contextmanager
from logging import getLogger
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NoReturn, Optional

import pandas as pd
import recbole
import torch
import yaml
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import ModelType, get_model, init_logger, init_seed, set_color

from recbole_dsl.config import DSL_SETTINGS, DSLConfig, import_recbole_models
from recbole_dsl.costs.compact import save_compact
from recbole_dsl.costs.measure import format_costs, measure_costs
from recbole_dsl.errors import DSLCheckpointError, DSLConfigError, DSLDatasetError, DSLError, DSLInterrupted
from recbole_dsl.methods import get_method
from recbole_dsl.model_size import fit_dense_small
from recbole_dsl.trainer import DSLTrainerMixin, create_trainer, is_main_process

# The dataset names RecBole downloads when their folder is missing, and how long a silent host may stall it.
RECBOLE_URL_FILE = Path(recbole.__file__).parent / "properties" / "dataset" / "url.yaml"
DOWNLOAD_TIMEOUT_S = 10



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
        _check_config_file(path)
    try:
        return DSLConfig(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    except DSLError:
        raise
    except (ValueError, KeyError, TypeError, SyntaxError) as e:
        raise DSLConfigError(f"invalid configuration: {e}") from None


def _check_config_file(path: str) -> None:
    """A config file must exist and hold a YAML mapping of settings, read as RecBole reads it."""
    if not os.path.isfile(path):
        raise DSLConfigError(f"config file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.load(f, Loader=Config._build_yaml_loader(None))
    except UnicodeDecodeError:
        raise DSLConfigError(f"config file {path} is not a text file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}: {getattr(e, 'problem', '')})" if mark else ""
        raise DSLConfigError(f"config file {path} is not YAML{where}") from None
    if content is None:
        raise DSLConfigError(f"config file {path} is empty: expected a mapping of settings, e.g. sparsity: 0.8")
    if not isinstance(content, dict):
        raise DSLConfigError(f"config file {path} holds a {type(content).__name__}: expected a mapping of settings, e.g. sparsity: 0.8")


def _check_model_name(model: str) -> None:
    import_recbole_models()  # before RecBole's lookup imports them with anomaly detection switched on
    try:
        get_model(model)
    except AttributeError:
        # RecBole finds the module by the lower-cased name, then the class by the name as given.
        suggestion = _model_spelled(model)
        hint = f": did you mean {suggestion}?" if suggestion else ": give the name of a RecBole model, e.g. BPR, LightGCN or SASRec"
        raise DSLConfigError(f"unknown model [{model}]{hint}") from None
    except (ValueError, ImportError) as e:
        # RecBole looks in the decision-tree models last, whose import needs lightgbm/xgboost.
        if isinstance(e, ImportError) and model.lower() in ("lightgbm", "xgboost"):
            raise DSLConfigError(f"{model} needs the package {e.name}: pip install {e.name}") from None
        raise DSLConfigError(f"unknown model [{model}]: give the name of a RecBole model, e.g. BPR, LightGCN or SASRec") from None


def _model_spelled(model: str) -> Optional[str]:
    """The RecBole model whose name differs from ``model`` only in case, if any."""
    for package in ("general_recommender", "sequential_recommender", "context_aware_recommender", "knowledge_aware_recommender"):
        try:
            module = importlib.import_module(f"recbole.model.{package}.{model.lower()}")
        except ImportError:
            continue
        for name in dir(module):
            if name.lower() == model.lower() and isinstance(getattr(module, name), type):
                return name
    return None


def load_dataset(config: DSLConfig):
    """RecBole's ``create_dataset``. A dataset neither in its folder nor downloadable ends
    with one line naming the folder and the ``recbole_dsl.prepare`` command that fills it."""
    name, folder = config["dataset"], config["data_path"]
    # The tool that fills a data folder, imported only to name its command.
    from recbole_dsl.tools.prepare import prepare_command

    prepare_hint = prepare_command(name, os.path.dirname(os.path.normpath(folder)))
    if not os.path.isdir(folder):
        if name not in _downloadable_datasets():
            raise DSLDatasetError(
                f"dataset [{name}] not found in {folder}, and RecBole cannot download it: prepare it with {prepare_hint}"
            )
        try:
            with _recbole_download(folder):
                return create_dataset(config)
        except (urllib.error.URLError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise DSLDatasetError(
                f"dataset [{name}] not found in {folder}, and its download failed ({reason}): prepare it with {prepare_hint}"
            ) from None
    parts = config["benchmark_filename"]
    expected = [f"{name}.{part}.inter" for part in parts] if parts else [f"{name}.inter"]
    missing = [file for file in expected if not os.path.isfile(os.path.join(folder, file))]
    if missing:
        raise DSLDatasetError(f"dataset [{name}] not found in {folder} (no {', '.join(missing)}): prepare it with {prepare_hint}")
    for file in expected:
        check_interaction_file(os.path.join(folder, file), config)
    try:
        return create_dataset(config)
    except ValueError as e:
        if "exist" not in str(e):
            raise
        raise DSLDatasetError(
            f"dataset [{config['dataset']}] not found: {e} Put its atomic files in "
            f"{config['data_path']} or pass --data_path=DIR"
        ) from None


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def check_interaction_file(path: str, config: DSLConfig) -> None:
    """An ``.inter`` file must be text with a ``name:type`` header naming the user and item
    fields, hold at least one interaction, and have numbers in its float columns: RecBole
    otherwise fails with a traceback, or trains on what it could not read."""
    separator, encoding = config["field_separator"], config["encoding"] or "utf-8"
    try:
        with open(path, encoding=encoding) as f:
            header = f.readline().rstrip("\r\n")
            has_rows = any(line.strip() for line in f)
    except UnicodeDecodeError:
        raise DSLDatasetError(f"{path} is not a text file in {encoding}") from None
    fields = header.split(separator)
    for field in fields:
        name, _, kind = field.partition(":")
        if not name or kind not in ATOMIC_TYPES:
            raise DSLDatasetError(
                f"{path}: header field {field!r} is not name:type with a type of {', '.join(ATOMIC_TYPES)} "
                f"(fields are separated by {separator!r})"
            )
    names = [field.partition(":")[0] for field in fields]
    for key in ("USER_ID_FIELD", "ITEM_ID_FIELD"):
        if config[key] and config[key] not in names:
            raise DSLDatasetError(f"{path}: no {config[key]} column ({key}); its header has {', '.join(names)}")
    if not has_rows:
        raise DSLDatasetError(f"{path} holds a header and no interactions")
    float_columns = [field for field in fields if field.endswith(":float")]
    if not float_columns:
        return
    read = functools.partial(pd.read_csv, path, sep=separator, usecols=float_columns, encoding=encoding, quoting=3)
    try:
        read(dtype={column: "float64" for column in float_columns}, engine="c")
    except ValueError:  # find the line to name
        table = read(dtype=str)
        for column in float_columns:
            values = table[column]
            bad = values.notna() & pd.to_numeric(values, errors="coerce").isna()
            if bad.any():
                row = int(bad.to_numpy().argmax())
                raise DSLDatasetError(f"{path}, line {row + 2}: {column} is {values.iloc[row]!r}, not a number") from None
        raise DSLDatasetError(f"{path}: cannot read {', '.join(float_columns)} as numbers") from None


def _downloadable_datasets() -> List[str]:
    with open(RECBOLE_URL_FILE, encoding="utf-8") as f:
        return list(yaml.safe_load(f))


@contextmanager
def _recbole_download(folder: str) -> Iterator[None]:
    """Let RecBole download a dataset into ``folder`` (missing until then) without hanging or
    crashing: sockets time out, RecBole's ``torch.distributed.barrier()`` after the download
    is skipped when no process group exists (it raises without one), and a
    folder a failed download left empty is removed, so the next run tries again."""
    previous_timeout, barrier = socket.getdefaulttimeout(), torch.distributed.barrier
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    if not torch.distributed.is_initialized():
        torch.distributed.barrier = lambda *args, **kwargs: None
    try:
        yield
    except BaseException:
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
        raise
    finally:
        torch.distributed.barrier = barrier
        socket.setdefaulttimeout(previous_timeout)


def run_recbole_dsl(
    model: Optional[str] = None,
    dataset: Optional[str] = None,
    config_file_list: Optional[List[str]] = None,
    config_dict: Optional[Dict[str, Any]] = None,
    saved: bool = True,
    callback_fn: Optional[Callable[[int, float], None]] = None,
) -> Dict[str, Any]:
    """Train ``model`` on ``dataset`` with DSL and evaluate it on the test split.

    Returns the run's summary (also written to ``results_file`` when that is set):
    model, dataset, DSL settings, best validation and test results, the final density and
    every sparsified tensor's size and number of non-zeros. ``callback_fn(epoch_idx,
    valid_score)`` is RecBole's ``Trainer.fit`` callback, called after every validation.
    """
    config = load_config(model, dataset, config_file_list, config_dict)
    check_paths(config)
    with claim_results_file(config["results_file"]), recbole_warnings_silenced():
        if config["nproc"] > 1 or config["world_size"] > 1:
            if callback_fn is not None:
                raise DSLConfigError("callback_fn needs a run in this process: nproc and world_size must be 1")
            return _run_processes(config, model, dataset, config_file_list, config_dict, saved)
        return _run(config, saved, callback_fn)


def _run_processes(
    config: DSLConfig,
    model: Optional[str],
    dataset: Optional[str],
    config_file_list: Optional[List[str]],
    config_dict: Optional[Dict[str, Any]],
    saved: bool,
) -> Dict[str, Any]:
    """Train on ``nproc`` processes of this machine (of ``world_size`` in all), as RecBole's
    ``run`` does: each builds its configuration again, with its ``local_rank``, from the
    same arguments (the command line included). Returns process 0's summary; the first
    error of a process is raised here, and stops the others."""
    if config["offset"] == 0:
        _check_port_free(config["ip"], config["port"])
    if not os.path.isdir(config["data_path"]):
        load_dataset(config)  # a download happens once, here, not in every process
    context = torch.multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    arguments = (model, dataset, config_file_list, config_dict, saved, queue)
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    level, interrupted, failure = spawn_logger.level, False, None
    spawn_logger.setLevel(logging.ERROR)  # its warning as it stops the others repeats the error
    processes = torch.multiprocessing.start_processes(
        _run_process, args=arguments, nprocs=config["nproc"], join=False, start_method="spawn"
    )
    try:
        while True:
            try:
                if interrupted:
                    # Every process stops on the same Ctrl-C: each reports it, process 0
                    # with its checkpoint, before any is stopped.
                    for process in processes.processes:
                        process.join()
                    break
                if processes.join():
                    break
            except torch.multiprocessing.ProcessExitedException:
                break  # the others are stopped; the process's own error is on the queue
            except torch.multiprocessing.ProcessRaisedException as e:
                failure = [line for line in str(e).splitlines() if line.strip()][-1]
                break
            except KeyboardInterrupt:
                interrupted = True
    finally:
        spawn_logger.setLevel(level)
    messages = []
    while not queue.empty():
        messages.append(queue.get())
    errors = [error for kind, _, error in sorted(messages, key=lambda message: message[1]) if kind == "error"]
    results = [message for kind, _, message in messages if kind == "result"]
    if results and all(isinstance(error, DSLInterrupted) for error in errors) and not failure:
        return results[0]  # process 0 wrote its results before the Ctrl-C reached it
    if errors:
        raise errors[0]
    if failure:
        raise DSLError(f"a training process failed: {failure}")
    if interrupted:
        raise DSLInterrupted(None)
    if config["offset"] == 0:
        raise DSLError("a training process ended without a result or an error")
    return {}


def _check_port_free(ip: str, port: int) -> None:
    """Process 0 listens on ``ip:port`` for the others: a port in use would fail in every
    process, after the data is loaded."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed run's port is free again
        try:
            probe.bind((ip, port))
        except OSError as e:
            raise DSLConfigError(f"invalid port={port}: cannot listen on {ip}:{port} ({e.strerror or e}): pass a free --port") from None


def _run_process(local_rank: int, model, dataset, config_file_list, config_dict, saved: bool, queue) -> None:
    """One process of a distributed run: its result (process 0) or its error to the queue.
    An unexpected exception is left to torch's spawn, which reports it to the driver."""
    exit_code = 0
    try:
        config = load_config(model, dataset, config_file_list, {**(config_dict or {}), "local_rank": local_rank})
        with recbole_warnings_silenced():
            result = _run(config, saved, None)
        if is_main_process():
            queue.put(("result", 0, result))
    except DSLError as e:
        queue.put(("error", local_rank, e))
        exit_code = 2
    except KeyboardInterrupt:  # before training started: _run names the checkpoint after that
        queue.put(("error", local_rank, DSLInterrupted(None)))
        exit_code = 130
    end_process(exit_code)


def end_process(exit_code: int) -> NoReturn:
    """Ends a training process of a distributed run without finalizing the interpreter.

    RecBole wraps the model in DistributedDataParallel, which keeps the gloo process group
    and its worker threads alive past ``destroy_process_group``. A worker still freeing the
    tensors of the last collective (it takes the GIL to) when the interpreter finalizes is
    stopped there, and the process aborts with SIGABRT ("terminate called without an active
    exception"). Everything the process reports has been sent by now, and multiprocessing's
    forked processes end the same way; the logs are flushed first.
    """
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


@contextmanager
def recbole_warnings_silenced() -> Iterator[None]:
    """RecBole 1.2.1's own code warns about pandas' fillna(inplace), torch's SparseTensor and
    GradScaler at every run; none of it is the user's to act on."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=r"recbole\.")
        yield


def _run(config: DSLConfig, saved: bool, callback_fn: Optional[Callable[[int, float], None]]) -> Dict[str, Any]:
    init_seed(config["seed"], config["reproducibility"])
    _init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    for note in config.notes:
        logger.info(set_color("DSL", "pink") + f": {note}")

    dataset = load_dataset(config)
    logger.info(dataset)
    if config["MODEL_TYPE"] == ModelType.CONTEXT and config["LABEL_FIELD"] not in dataset.field2type:
        raise DSLConfigError(
            f"{config['model']} learns from labelled interactions and {config['dataset']} has no {config['LABEL_FIELD']} "
            "column: set threshold (e.g. --threshold=\"{'rating': 4}\") with eval_args mode labeled and metrics "
            "AUC and LogLoss, as RecBole's context-aware models expect"
        )
    train_data, valid_data, test_data = data_preparation(config, dataset)

    model_class = get_model(config["model"])
    dense_small = None
    if get_method(config["dsl_method"]).scales_model:
        dense_small = fit_dense_small(config, lambda: model_class(config, train_data._dataset))
        logger.info(
            set_color("DSL", "pink") + f": dense_small sizes {dense_small['sizes']} (from {dense_small['base_sizes']}): "
            f"{dense_small['params']:,d} trainable parameters for the {dense_small['budget']:,d} non-zeros of sparsity "
            f"{config['sparsity']}"
        )
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    try:
        model = model_class(config, train_data._dataset).to(config["device"])
    except ModuleNotFoundError as e:  # KGAT's dgl, KGIN's torch_scatter: imported when the model is built
        raise DSLConfigError(f"{config['model']} needs the package {e.name}: pip install {e.name}") from None
    logger.info(model)

    trainer = create_trainer(config, model)
    if config["resume_file"]:
        trainer.resume_checkpoint(config["resume_file"])
    # Only passed when set: RecBole's DecisionTreeTrainer.fit takes no callback_fn.
    fit_kwargs = {"callback_fn": callback_fn} if callback_fn else {}
    trained = False
    try:
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"], **fit_kwargs
        )
        trained = True
        # A non-parametric model is fitted once and kept in memory; RecBole's own checkpoint
        # of it pickles scipy objects that torch >= 2.6 refuses to load by default.
        dsl_applied = isinstance(trainer, DSLTrainerMixin)
        started = time.perf_counter()
        test_result = trainer.evaluate(
            test_data, load_best_model=saved and dsl_applied, show_progress=config["show_progress"]
        )
        test_seconds = time.perf_counter() - started

        result = {
            "model": config["model"],
            "dataset": config["dataset"],
            "dsl": {key: config[key] for key in DSL_SETTINGS},
            "dsl_applied": dsl_applied,
            "dense_small": dense_small,
            "best_valid_score": _plain(best_valid_score),
            "best_valid_result": _plain(best_valid_result),
            "test_result": _plain(test_result),
            "final_density": None,
            "sparsified": {},
            "checkpoint": trainer.saved_model_file if saved and dsl_applied else None,
            "compact_file": None,
            "costs": None,
            # RecBole's record of each epoch's training loss (tuples of losses summed).
            "train_loss": [float(loss) for _, loss in sorted(trainer.train_loss_dict.items())],
            # [epoch, validation score] of every validation (valid_metric).
            "valid_scores": getattr(trainer, "valid_scores", []),
        }
        if dsl_applied:
            result["sparsified"] = trainer.sparsity_summary()
            result["final_density"] = trainer.mask_manager.overall_density()
            if saved and is_main_process():
                result["compact_file"] = compact_file_name(trainer.saved_model_file)
                save_compact(result["compact_file"], trainer.model.state_dict(), trainer.mask_manager.masks)
            result["costs"] = {**measure_costs(trainer, train_data, test_data), "test_seconds": test_seconds}
    except KeyboardInterrupt:
        checkpoint = getattr(trainer, "saved_model_file", None)
        checkpoint = checkpoint if saved and checkpoint and os.path.isfile(checkpoint) else None
        raise DSLInterrupted(checkpoint, trained=trained) from None
    finally:
        # RecBole never closes its SummaryWriter: its thread would write the last events
        # later, to ./log_tensorboard relative to whatever the working directory is then.
        trainer.tensorboard.close()
    if not is_main_process():
        return result
    _log_summary(logger, result)
    if config["results_file"]:
        write_results(config["results_file"], result)
        logger.info(set_color("results written to", "blue") + f": {config['results_file']}")
    return result


def _init_logger(config: DSLConfig) -> None:
    """RecBole's logger. RecBole names the log file by the time to the second and a hash of
    the settings' values, which two identical runs started together share; a value of this
    run's own joins the hash. RecBole's ensure_dir checks, then creates: the processes of a
    distributed run race for ``./log/<model>``, so it is made here first."""
    os.makedirs(os.path.join("log", config["model"]), exist_ok=True)
    config.final_config_dict["log_id"] = f"{os.getpid()}-{time.time_ns()}"
    try:
        init_logger(config)
    finally:
        del config.final_config_dict["log_id"]


def check_paths(config: DSLConfig) -> None:
    """The checkpoint to resume from must exist, and every place a run writes to must be
    writable, before training starts: not found unwritable after it."""
    resume_file = config["resume_file"]
    if resume_file and not os.path.isfile(resume_file):
        raise DSLCheckpointError(f"checkpoint {resume_file} does not exist")
    places = [("checkpoint_dir", config["checkpoint_dir"], True)]
    if config["results_file"]:
        places.append(("results_file", config["results_file"], False))
    for key, path, is_folder in places:
        if not is_folder and os.path.isdir(path):
            raise DSLConfigError(f"invalid {key}={path!r}: a folder, expected a file path")
        if is_folder and os.path.exists(path) and not os.path.isdir(path):
            raise DSLConfigError(f"invalid {key}={path!r}: a file, expected a folder")
        folder = os.path.abspath(path if is_folder else os.path.dirname(os.path.abspath(path)))
        existing = folder
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
            raise DSLConfigError(f"invalid {key}={path!r}: cannot write in {existing}")
        if not is_folder and os.path.exists(path) and not os.access(path, os.W_OK):
            raise DSLConfigError(f"invalid {key}={path!r}: the file is read-only")


@contextmanager
def claim_results_file(path: Optional[str]) -> Iterator[None]:
    """Hold ``<results_file>.lock`` for the run, so that two runs never write the same
    results file (the last writer would win silently). A lock left by a process that no
    longer runs is taken over."""
    if not path:
        yield
        return
    lock = f"{path}.lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and _process_exists(owner):
                raise DSLConfigError(f"results_file {path} is being written by another run (process {owner}, {lock})") from None
            os.remove(lock)
    else:
        raise DSLConfigError(f"results_file {path} is being written by another run ({lock})")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        os.remove(lock)


def _lock_owner(lock: str) -> Optional[int]:
    try:
        with open(lock, encoding="utf-8") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compact_file_name(checkpoint_file: str) -> str:
    """The compact export sits next to the checkpoint: ``saved/BPR-<date>.safetensors``."""
    return os.path.splitext(checkpoint_file)[0] + ".safetensors"


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
        width = max(len(name) for name in result["sparsified"])
        for name, entry in result["sparsified"].items():
            lines.append(f"    {name:<{width}} {entry['nnz']:>10,d} / {entry['numel']:>10,d} = {entry['nnz'] / entry['numel']:.4f}")
        logger.info("\n".join(lines))
    if result["costs"]:
        logger.info(set_color("costs", "yellow") + "\n" + format_costs(result["costs"]))
    if result["compact_file"]:
        logger.info(set_color("compact model written to", "blue") + f": {result['compact_file']}")


def write_results(path: str, result: Dict[str, Any]) -> None:
    """Write the summary atomically, so an interrupted or failed write never leaves a broken
    file, nor a temporary one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise DSLConfigError(f"cannot write results_file {path}: {e.strerror or e}") from None
