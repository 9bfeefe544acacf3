"""RecBole trainers that train sparse with DSL.

:func:`create_trainer` takes whatever trainer RecBole would pick for a model (``Trainer``,
``RecVAETrainer``, ``NCLTrainer``, ``S3RecTrainer``, ...) and puts
:class:`DSLTrainerMixin` in front of it. The mixin never copies RecBole's training loop:
the :class:`~recbole_dsl.sparse.MaskManager` hooks into every optimizer the trainer
builds, and the mixin adds what RecBole cannot know about (weights-only checkpoints that
carry the masks, the end of the schedule, logging).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import math
import os
import random
import shutil
import time
from logging import getLogger
from typing import Dict, List, Optional, Type

import numpy as np
import torch
from recbole.trainer import AbstractTrainer
from recbole.utils import ModelType, early_stopping, get_trainer, set_color
from torch import nn
from tqdm.contrib.logging import logging_redirect_tqdm

from recbole_dsl.config import DSL_SETTINGS, mp_prune_epoch
from recbole_dsl.errors import DSLCheckpointError, DSLConfigError
from recbole_dsl.methods import Method, get_method, sparsity_distribution
from recbole_dsl.sparse import CosineUpdateSchedule, MaskManager, MaskUpdate, select_parameters


def is_non_parametric(model: nn.Module) -> bool:
    """Models fitted in closed form or by counting: nothing for DSL to sparsify."""
    if getattr(model, "type", None) in (ModelType.TRADITIONAL, ModelType.DECISIONTREE):
        return True
    return all(p.numel() <= 1 for p in model.parameters() if p.requires_grad)


def clear_cached_embeddings(model: nn.Module) -> None:
    """Drop propagated embeddings cached for prediction (LightGCN's ``restore_user_e``, DMF's
    ``i_embedding``, ...), so that predictions never use weights from before a mask change.

    A cache is an entry of ``other_parameter_name`` that is still None when DSL first sees
    the model; the others (KGCN's ``adj_entity``, RippleNet's ``ripple_set``) are state the
    model built in its constructor and are kept."""
    caches = getattr(model, "_dsl_prediction_caches", None)
    if caches is None:
        caches = [name for name in getattr(model, "other_parameter_name", []) if getattr(model, name, None) is None]
        model._dsl_prediction_caches = caches
    for name in caches:
        value = getattr(model, name, None)
        if torch.is_tensor(value) and not isinstance(value, nn.Parameter):
            setattr(model, name, None)




def fused_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """A freshly built ``optimizer`` rebuilt with torch's fused kernel where it has one
    (Adam, AdamW, SGD, Adagrad); any other optimizer, or parameters the kernel does not
    take, are returned as they are."""
    if optimizer.defaults.get("fused", True):
        return optimizer
    try:
        accepted = inspect.signature(type(optimizer)).parameters
        groups = [{key: value for key, value in group.items() if key != "fused"} for group in optimizer.param_groups]
        defaults = {key: value for key, value in optimizer.defaults.items() if key in accepted}
        return type(optimizer)(groups, **{**defaults, "fused": True})
    except (RuntimeError, ValueError):
        return optimizer


def is_main_process() -> bool:
    """Process 0 of a distributed run, or the one process of a run: the one that writes."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def check_masks_agree(masks: Dict[str, torch.Tensor]) -> None:
    """Raise when the masks differ between the processes of a distributed run: each one
    prunes and grows by itself, from the gradient averaged over all of them."""
    sums = []
    for mask in masks.values():
        positions = mask.flatten().nonzero().flatten()
        sums.append((positions * (positions % 9973 + 1)).sum())
    local = torch.stack(sums)
    lowest, highest = local.clone(), local.clone()
    torch.distributed.all_reduce(lowest, op=torch.distributed.ReduceOp.MIN)
    torch.distributed.all_reduce(highest, op=torch.distributed.ReduceOp.MAX)
    if not torch.equal(lowest, highest):
        differing = [name for name, low, high in zip(masks, lowest, highest) if low != high]
        raise RuntimeError(f"the masks of {', '.join(differing)} differ between processes")


def read_checkpoint(checkpoint_file: str, map_location: "str | torch.device" = "cpu") -> dict:
    """A checkpoint written by :class:`DSLTrainerMixin` (weights-only: plain tensors and
    numbers); :class:`DSLCheckpointError` for a missing, unreadable or foreign file."""
    try:
        checkpoint = torch.load(checkpoint_file, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise DSLCheckpointError(f"checkpoint {checkpoint_file} does not exist") from None
    except Exception as e:
        raise DSLCheckpointError(
            f"cannot read checkpoint {checkpoint_file}: corrupt, truncated or not written by recbole-dsl "
            f"({type(e).__name__})"
        ) from None
    required = ("config", "epoch", "state_dict", "optimizers", "sparsity")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in required):
        raise DSLCheckpointError(f"{checkpoint_file} is not a recbole-dsl checkpoint")
    return checkpoint


_claimed_names: set = set()


def unique_checkpoint_name(path: str) -> str:
    """RecBole names a checkpoint by the model and the time to the second; two runs started
    together would share it and test each other's model. The process id and, within one
    process, a counter make the name the run's own."""
    stem, extension = os.path.splitext(path)
    for n in itertools.count():
        candidate = f"{stem}-{os.getpid()}{f'-{n}' if n else ''}{extension}"
        if candidate not in _claimed_names and not os.path.exists(candidate):
            _claimed_names.add(candidate)
            return candidate


class DSLTrainerMixin:
    """Adds Dynamic Sparse Learning to a RecBole trainer class (put it first in the bases).

    ``dsl_method`` picks how the masks behave (:mod:`recbole_dsl.methods`).
    :attr:`dense_iterations` counts the optimizer iterations MP trained with every weight
    active (0 for the other methods).

    Mask exploration ends at T_end, ``min(update_end * epochs, update_epochs)`` epochs of
    iterations, and validations before it never count towards early stopping: a run
    cannot stop while masks are still exchanged at a high ratio.
    """

    mask_manager: MaskManager
    dense_iterations: int

    def __init__(self, config, model):
        # RecBole's ensure_dir checks, then creates: the processes of a distributed run race
        # between the two, and all but one fail with FileExistsError.
        os.makedirs(config["checkpoint_dir"], exist_ok=True)
        if not config["single_spec"] and config["device"].type == "cpu":
            # RecBole wraps the model for one GPU per process (device_ids=[local_rank]);
            # DistributedDataParallel takes no device ids for a model on the CPU.
            config["single_spec"] = True
            try:
                super().__init__(config, model)
            finally:
                config["single_spec"] = False
            self.distributed_model = nn.parallel.DistributedDataParallel(self.model)
        else:
            super().__init__(config, model)
        self.saved_model_file = unique_checkpoint_name(self.saved_model_file)
        # RecBole's clip_grad_norm_ would count the inactive gradients: _clip_gradients
        # clips at every optimizer step instead.
        self.clip_grad_norm = None

    def _build_optimizer(self, **kwargs):
        # The masks come first: with sparse_storage the optimizer steps the packed values.
        if not hasattr(self, "mask_manager"):
            self._last_valid_result = None
            self.epoch_seconds: List[float] = []
            self.valid_scores: List[List[float]] = []
            self.optimizer_steps = 0
            self.gradient_growth_updates = 0
            self.dense_iterations = 0
            self._pruned = False
            self._best_dense_state: Optional[Dict[str, torch.Tensor]] = None
            self.mask_manager = self._create_mask_manager()
        optimizer = super()._build_optimizer(**kwargs)
        if self.config["fused_optimizer"]:
            optimizer = fused_optimizer(optimizer)
        if self.config["clip_grad_norm"]:
            optimizer.register_step_pre_hook(self._clip_gradients)
        optimizer.register_step_post_hook(self._count_step)
        self.mask_manager.attach(optimizer)
        return optimizer

    def _create_mask_manager(self) -> MaskManager:
        config = self.config
        names = select_parameters(self.model, config["sparse_params"])
        if not names:
            raise DSLConfigError(
                f"sparse_params={config['sparse_params']!r} selects no trainable tensor of {config['model']}"
            )
        sparse_gradient = [
            f"{module_name}.weight" for module_name, module in self.model.named_modules()
            if isinstance(module, nn.Embedding) and module.sparse and f"{module_name}.weight" in names
        ]
        if sparse_gradient:
            raise DSLConfigError(
                f"{config['model']}'s {', '.join(sparse_gradient)} has sparse gradients (nn.Embedding(sparse=True)), "
                "which masks cannot rank: leave it out with sparse_params"
            )
        method = self.method
        schedule = CosineUpdateSchedule(
            # An interval of 0 never updates: rp keeps its random mask, mp its pruned one.
            update_interval=config["update_interval"] if method.explores else 0,
            init_update_ratio=config["init_update_ratio"],
            min_update_ratio=config["min_update_ratio"],
        )
        embeddings = set(select_parameters(self.model, "embeddings"))
        prefix_names = []
        if method.embedding_structure == "prefix":
            tables = [n for n in names if n in embeddings and self.model.get_parameter(n).dim() == 2]
            selection = config["prefix_params"]
            prefix_names = tables
            if selection != "embeddings":
                selected = set(select_parameters(self.model, selection))
                prefix_names = [n for n in tables if n in selected]
                if selection and not prefix_names:
                    raise DSLConfigError(
                        f"prefix_params={selection!r} selects none of {config['model']}'s sparsified embedding tables "
                        f"({', '.join(tables) or 'none'}); [] gives every table unstructured masks"
                    )
        # A lookup table has no fan-in: only the layers that sum over their inputs are rescaled
        # (the manager leaves a dense start as it is).
        scales_init = config["scale_sparse_init"] and method.sparse
        scaled_init_names = [n for n in names if n not in embeddings] if scales_init else []
        try:
            manager = MaskManager(
                self.model,
                names,
                density=1.0 - config["sparsity"] if method.sparse else 1.0,
                schedule=schedule,
                growth=method.growth,
                distribution=sparsity_distribution(self.config),
                shared_budget=config["shared_budget"],
                seed=config["seed"] or 0,
                on_update=self._on_mask_update,
                dense_start=method.dense_start,
                prefix_names=prefix_names,
                grown_init_scale=method.grown_init_scale,
                regrown_keep_values=config["regrown_keep_values"],
                growth_gradient=config["growth_gradient"] or method.growth_gradient,
                scaled_init_names=scaled_init_names,
                prefix_growth=config["prefix_growth"],
            )
        except ValueError as e:
            raise DSLConfigError(f"dsl_method={method.name} cannot sparsify {config['model']}: {e}") from None
        if config["sparse_storage"]:
            self._pack_embeddings(manager)
        clear_cached_embeddings(self.model)
        self._log_selection(manager)
        return manager

    def _pack_embeddings(self, manager: MaskManager) -> None:
        """``sparse_storage``: every sparsified ``nn.Embedding`` table is held as its active
        values and their positions while it trains; other tensors keep their masks."""
        for name in manager.names:
            module_name, _, attribute = name.rpartition(".")
            if attribute == "weight" and isinstance(self.model.get_submodule(module_name), nn.Embedding):
                try:
                    manager.pack(name)
                except ValueError as e:
                    raise DSLConfigError(f"sparse_storage=True cannot train {self.config['model']}: {e}") from None
        if not manager.packed_names:
            raise DSLConfigError(
                f"sparse_storage=True cannot train {self.config['model']}: none of its sparsified tensors is an nn.Embedding table"
            )

    def _log_selection(self, manager: MaskManager) -> None:
        config = self.config
        method = self.method
        if method.scales_model:
            mode = f"dense model scaled to the budget of sparsity {config['sparsity']}: masks are all ones and never updated"
        elif manager.is_dense:
            mode = "dense (sparsity 0): masks are all ones and never updated"
        elif method.dense_start:
            prune_epoch = mp_prune_epoch(self.epochs, config["prune_epoch_fraction"])
            if method.prunes_at_plateau:
                mode = (
                    f"dense until validation plateaus (stopping_step {self.stopping_step}) or for {prune_epoch} of "
                    f"{self.epochs} epochs, then magnitude pruning of the best dense model to the budget and "
                    "fine-tuning with the mask fixed"
                )
            else:
                mode = (
                    f"dense for {prune_epoch} of {self.epochs} epochs, "
                    "then magnitude pruning to the budget and fine-tuning with the mask fixed"
                )
        elif not method.explores:
            mode = "static random mask, never updated"
        else:
            gradient = f" ({manager.growth_gradient} gradient)" if manager.growth == "gradient" else ""
            mode = (
                f"{manager.growth} growth{gradient} every {config['update_interval']} iterations, "
                f"rho0 {config['init_update_ratio']}, rho_min {config['min_update_ratio']}, "
                f"until {self._update_end_epochs():g} epochs"
            )
            prefix = [n for n in manager.names if manager.structures[n] == "prefix"]
            if prefix:
                mode += f"; variable-length rows (prefix masks, {manager.prefix_growth} growth) in {', '.join(prefix)}"
        if manager.scaled_init_names:
            mode += f"; initial weights scaled to each unit's active fan-in in {', '.join(manager.scaled_init_names)}"
        if manager.packed_names:
            mode += f"; held as active values and positions (sparse_storage): {', '.join(manager.packed_names)}"
        budget = "one budget shared by all tensors" if config["shared_budget"] else "a budget per tensor"
        lines = [
            set_color("DSL", "pink")
            + f": method {method.name}, sparsity {config['sparsity']} over {len(manager.names)} tensors of "
            f"{config['model']}, {sparsity_distribution(self.config)} distribution, {budget}; {mode}"
        ]
        width = max(len(name) for name in manager.names)
        for name, numel in manager.numel().items():
            shape = "x".join(str(s) for s in manager.masks[name].shape)
            lines.append(f"    {name:<{width}} {shape:>12}  {numel:>10,d} -> {manager.budgets[name]:>10,d} non-zero")
        self.logger.info("\n".join(lines))
        for name, budget in manager.budgets.items():
            if budget == 0 and not manager.is_dense:
                self.logger.warning(
                    set_color("DSL", "pink") + f": {name} ({manager.numel()[name]:,d} weights) keeps no non-zero at sparsity "
                    f"{config['sparsity']}: it stays zero for the whole run (sparsity_distribution=erk keeps small tensors denser)"
                )

    def _clip_gradients(self, optimizer, args, kwargs) -> None:
        """``clip_grad_norm`` over the sparse model: the norm of the active entries, before
        the masks' own hook (registered after this one) ranks or accumulates gradients."""
        self.mask_manager.clip_grad_norm_(self.model.parameters(), **self.config["clip_grad_norm"])

    def _count_step(self, optimizer, args, kwargs) -> None:
        # Counted for every method, dense included, for the training cost figures.
        self.optimizer_steps += 1

    def _on_mask_update(self, update: MaskUpdate) -> None:
        if self.mask_manager.growth == "gradient":
            self.gradient_growth_updates += 1
        clear_cached_embeddings(self.model)
        if torch.distributed.is_initialized():
            check_masks_agree(self.mask_manager.masks)
        self.logger.info(
            set_color("DSL mask update", "pink")
            + f" [iteration {update.iteration}, rho_t {update.update_ratio:.4f}, "
            f"exchanged {update.exchanged:,d}, density {update.density:.4f}]"
        )

    @property
    def method(self) -> Method:
        return get_method(self.config["dsl_method"])

    def _update_end_epochs(self) -> float:
        """T_end in epochs: ``update_end`` of the epochs, or ``update_epochs`` when sooner."""
        end = self.config["update_end"] * self._total_epochs()
        if self.config["update_epochs"] is not None:
            end = min(end, self.config["update_epochs"])
        return end

    def _exploring(self) -> bool:
        schedule = self.mask_manager.schedule
        return (
            schedule.update_interval > 0
            and not self.mask_manager.is_dense
            and schedule.end_iteration is not None
            and self.mask_manager.iteration < schedule.end_iteration
        )

    def _total_epochs(self) -> int:
        stage = self.config["train_stage"]
        if isinstance(stage, str) and "pretrain" in stage and hasattr(self, "pretrain_epochs"):
            return self.pretrain_epochs
        return self.epochs

    def fit(self, *args, **kwargs):
        result = super().fit(*args, **kwargs)
        # What training held between steps, read before packed tables turn back into masked
        # ones: the test and the cost counts then see the model a masked run has.
        self.train_state = self.mask_manager.train_state_bytes()
        self.mask_manager.unpack()
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        # T_end counts optimizer iterations: estimated from the batches per epoch (times
        # RecVAE's encoder and decoder passes), then measured after the first epoch, for
        # trainers that step a different number of times per epoch.
        schedule = self.mask_manager.schedule
        end_epochs = self._update_end_epochs()
        if schedule.end_iteration is None:
            passes = getattr(self, "n_enc_epochs", 0) + getattr(self, "n_dec_epochs", 0) or 1
            schedule.end_iteration = max(1, math.ceil(end_epochs * len(train_data) * passes))
        self._train_data = train_data
        loader_state = getattr(self, "_pending_loader_state", None)
        if loader_state is not None and hasattr(train_data, "generator"):
            train_data.generator.set_state(loader_state)
            self._pending_loader_state = None
        start = self.mask_manager.iteration
        started_at = time.perf_counter()
        # Mask updates are logged inside the epoch: through tqdm's writer, above the progress bar.
        with logging_redirect_tqdm() if show_progress else contextlib.nullcontext():
            loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.epoch_seconds.append(time.perf_counter() - started_at)
        steps = self.mask_manager.iteration - start
        if steps and not getattr(self, "_end_iteration_measured", False):
            schedule.end_iteration = max(1, math.ceil(end_epochs * steps))
            self._end_iteration_measured = True
        if self._in_dense_phase() and epoch_idx + 1 >= mp_prune_epoch(self._total_epochs(), self.config["prune_epoch_fraction"]):
            self._prune_dense_model(epoch_idx)
        return loss

    def _in_dense_phase(self) -> bool:
        return self.method.dense_start and not self._pruned and not self.mask_manager.is_dense

    def _prune_dense_model(self, epoch_idx: int) -> None:
        """MP's one-shot pruning. Validation restarts from scratch here, so RecBole's early
        stopping and best checkpoint only ever compare models at the sparse budget.

        mp_best prunes the best dense model it validated, and fine-tunes it with fresh
        optimizer state: the moments of the later, overfitted steps do not belong to it."""
        if self.method.prunes_at_plateau and self._best_dense_state is not None:
            self.model.load_state_dict(self._best_dense_state)
            self._best_dense_state = None
            for optimizer in self.mask_manager.optimizers:
                optimizer.state.clear()
        pruned = self.mask_manager.prune_by_magnitude()
        self._pruned = True
        self.dense_iterations = self.mask_manager.iteration
        clear_cached_embeddings(self.model)
        self.best_valid_score = -math.inf if self.valid_metric_bigger else math.inf
        self.best_valid_result = None
        self.cur_step = 0
        self.logger.info(
            set_color("DSL magnitude pruning", "pink")
            + f" [epoch {epoch_idx}, after {self.dense_iterations:,d} dense iterations, pruned {pruned:,d}, "
            f"density {self.mask_manager.overall_density():.4f}]: fine-tuning with the mask fixed"
        )

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        epoch_idx = len(self.train_loss_dict) - 1
        self.valid_scores.append([epoch_idx, float(valid_score)])
        if self._in_dense_phase() and self.method.prunes_at_plateau:
            # What RecBole's early stopping will make of this score, asked ahead of it.
            _, _, stops, improves = early_stopping(
                valid_score, self.best_valid_score, self.cur_step, max_step=self.stopping_step, bigger=self.valid_metric_bigger
            )
            if improves:
                self._keep_best_dense_model()
            elif stops:
                # RecBole's early stopping would end the dense run here: prune instead, and
                # validate the pruned model, whose score fine-tuning's early stopping starts from.
                self._prune_dense_model(epoch_idx)
                valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
                self.valid_scores.append([epoch_idx, float(valid_score)])
        elif self._in_dense_phase():
            # Every dense validation counts as an improvement: early stopping cannot end
            # the run before MP prunes, and pruning resets the best score anyway.
            self.best_valid_score = -math.inf if self.valid_metric_bigger else math.inf
        elif self._exploring():
            # Masks are still exchanged: this validation keeps the best checkpoint but does
            # not count towards early stopping (RecBole's early_stopping adds 1 to this, or
            # resets it to 0 on an improvement), which starts counting at T_end.
            self.cur_step = -1
        self._last_valid_result = valid_result
        return valid_score, valid_result

    def _keep_best_dense_model(self) -> None:
        """mp_best's copy of the best dense weights so far, which it prunes."""
        self._best_dense_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # ---------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """Write a checkpoint that ``torch.load(..., weights_only=True)`` reads: plain
        tensors and numbers, the masks and the schedule, every optimizer's state."""
        if not is_main_process():
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": {
                "model": self.config["model"],
                "dataset": self.config["dataset"],
                **{key: self.config[key] for key in DSL_SETTINGS},
            },
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": {k: float(v) for k, v in (self._last_valid_result or {}).items()},
            "state_dict": self.model.state_dict(),
            "optimizers": [optimizer.state_dict() for optimizer in self.mask_manager.optimizers],
            "sparsity": self.mask_manager.state_dict(),
            "pruned": self._pruned,
            "dense_iterations": self.dense_iterations,
            # What the cost figures count over the whole run, resumed or not.
            "optimizer_steps": self.optimizer_steps,
            "gradient_growth_updates": self.gradient_growth_updates,
            "epoch_seconds": list(self.epoch_seconds),
            "valid_scores": [list(pair) for pair in self.valid_scores],
            "train_loss": [[int(e), float(loss)] for e, loss in self.train_loss_dict.items()],
            "random_state": self._random_state(),
        }
        # Written aside and moved into place: a full disk never leaves a broken best checkpoint.
        partial = f"{saved_model_file}.{os.getpid()}.tmp"
        try:
            torch.save(state, partial)
            os.replace(partial, saved_model_file)
        except (OSError, RuntimeError) as e:
            if os.path.exists(partial):
                os.remove(partial)
            raise DSLCheckpointError(f"cannot write checkpoint {saved_model_file}: {getattr(e, 'strerror', None) or e}") from None
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _random_state(self) -> Dict:
        """Every random state the next epochs draw from (Python's, numpy's for RecBole's
        negative sampler, torch's, the training data loader's shuffling), so that a resumed
        run continues exactly as the uninterrupted one."""
        version, keys, gauss = random.getstate()
        name, mt_keys, position, has_gauss, cached = np.random.get_state()
        state = {
            "python": [version, list(keys), gauss],
            "numpy": [name, torch.from_numpy(mt_keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state(),
        }
        loader = getattr(self, "_train_data", None)
        if loader is not None and hasattr(loader, "generator"):
            state["train_loader"] = loader.generator.get_state()
        return state

    def _restore_random_state(self, state: Dict) -> None:
        version, keys, gauss = state["python"]
        random.setstate((version, tuple(keys), gauss))
        name, mt_keys, position, has_gauss, cached = state["numpy"]
        np.random.set_state((name, mt_keys.numpy().astype(np.uint32), position, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        self._pending_loader_state = state.get("train_loader")

    def save_pretrained_model(self, epoch, saved_model_file):
        """Pre-training stages (RaCT, S3Rec) save in the same weights-only format."""
        self._save_checkpoint(epoch, verbose=False, saved_model_file=saved_model_file)
        self.saved_model_file = saved_model_file

    def _load_checkpoint(self, checkpoint_file: str, training_state: bool = True) -> dict:
        """Restore weights and masks, and with ``training_state`` the schedule and MP's
        phase; raise :class:`DSLCheckpointError` on a bad file."""
        checkpoint = read_checkpoint(checkpoint_file, self.device)
        if checkpoint["config"].get("model") != self.config["model"]:
            raise DSLCheckpointError(
                f"checkpoint {checkpoint_file} holds a {checkpoint['config'].get('model')} model, not {self.config['model']}"
            )
        dataset = checkpoint["config"].get("dataset", self.config["dataset"])
        if dataset != self.config["dataset"]:
            raise DSLCheckpointError(f"checkpoint {checkpoint_file} was trained on dataset {dataset}, not {self.config['dataset']}")
        method = checkpoint["config"].get("dsl_method", "dsl")
        if method != self.config["dsl_method"]:
            raise DSLCheckpointError(
                f"checkpoint {checkpoint_file} was trained with dsl_method={method}, not {self.config['dsl_method']}"
            )
        try:
            # Masks first: a packed table takes its values from the weight at its mask.
            self.mask_manager.load_state_dict(checkpoint["sparsity"], masks_only=not training_state)
            self.model.load_state_dict(checkpoint["state_dict"])
        except (RuntimeError, KeyError, ValueError) as e:
            reason = str(e).strip().splitlines()[0]
            raise DSLCheckpointError(f"checkpoint {checkpoint_file} does not fit this model: {reason}") from None
        if training_state:
            self._pruned = bool(checkpoint.get("pruned", False))
            self.dense_iterations = int(checkpoint.get("dense_iterations", 0))
        clear_cached_embeddings(self.model)
        return checkpoint

    def resume_checkpoint(self, resume_file):
        """Continue from ``resume_file`` with the settings it was trained with; later
        checkpoints go to this run's own file, which starts as a copy of it, so the input is
        never overwritten and the best model so far stays the one tested."""
        resume_file = str(resume_file)
        checkpoint = self._load_checkpoint(resume_file)
        self._check_resume_settings(resume_file, checkpoint["config"])
        if is_main_process():
            shutil.copyfile(resume_file, self.saved_model_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint["best_valid_result"] or None
        if len(checkpoint["optimizers"]) != len(self.mask_manager.optimizers):
            raise DSLCheckpointError(f"checkpoint {resume_file} holds {len(checkpoint['optimizers'])} optimizer states, expected {len(self.mask_manager.optimizers)}")
        for optimizer, optimizer_state in zip(self.mask_manager.optimizers, checkpoint["optimizers"]):
            optimizer.load_state_dict(optimizer_state)
        self.optimizer_steps = int(checkpoint.get("optimizer_steps", 0))
        self.gradient_growth_updates = int(checkpoint.get("gradient_growth_updates", 0))
        self.epoch_seconds = [float(s) for s in checkpoint.get("epoch_seconds", [])]
        self.valid_scores = [[int(e), float(v)] for e, v in checkpoint.get("valid_scores", [])]
        self.train_loss_dict.update({int(e): float(loss) for e, loss in checkpoint.get("train_loss", [])})
        if "random_state" in checkpoint:
            self._restore_random_state(checkpoint["random_state"])
        self._end_iteration_measured = True
        if self.method.prunes_at_plateau and not self._pruned:
            # RecBole saves at every improvement: a dense checkpoint holds the best dense model so far.
            self._keep_best_dense_model()
        self.logger.info(
            f"Checkpoint loaded. Resume training from epoch {self.start_epoch} "
            f"(DSL iteration {self.mask_manager.iteration} of {self.mask_manager.schedule.end_iteration})"
        )

    def _check_resume_settings(self, resume_file: str, saved: Dict) -> None:
        differences = [
            f"{key}={saved[key]!r} there, {self.config[key]!r} here"
            for key in DSL_SETTINGS
            if key in saved and saved[key] != self.config[key]
        ]
        if differences:
            raise DSLCheckpointError(
                f"checkpoint {resume_file} was trained with other settings ({'; '.join(differences)}): "
                "resume with its settings, or start a new run"
            )

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            # The best model's weights and masks; the run's schedule and counters stay where training left them.
            if torch.distributed.is_initialized():
                # Process 0 wrote the checkpoint, on its machine: it reads it and sends it to the others.
                torch.distributed.barrier()
                if is_main_process():
                    self._load_checkpoint(checkpoint_file, training_state=False)
                self._broadcast_model()
            else:
                self._load_checkpoint(checkpoint_file, training_state=False)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _broadcast_model(self) -> None:
        """Process 0's weights, buffers and masks on every process."""
        for tensor in self.model.state_dict().values():
            torch.distributed.broadcast(tensor, src=0)
        for name, mask in self.mask_manager.masks.items():
            received = mask.to(torch.uint8)
            torch.distributed.broadcast(received, src=0)
            self.mask_manager.set_mask(name, received)
        clear_cached_embeddings(self.model)

    # ---------------------------------------------------------------- reporting
    def sparsity_summary(self) -> Dict[str, Dict[str, int]]:
        """Per sparsified tensor: its size and its number of active (non-zero) entries."""
        numel, nnz = self.mask_manager.numel(), self.mask_manager.nnz()
        return {name: {"numel": numel[name], "nnz": nnz[name]} for name in self.mask_manager.names}


@functools.lru_cache(maxsize=None)
def dsl_trainer_class(base: Type[AbstractTrainer]) -> Type[AbstractTrainer]:
    """``base`` with :class:`DSLTrainerMixin` in front, e.g. ``DSLRecVAETrainer``."""
    return type(f"DSL{base.__name__}", (DSLTrainerMixin, base), {})


def create_trainer(config, model: nn.Module) -> AbstractTrainer:
    """The trainer RecBole would use for ``model``, training sparse with DSL.

    Non-parametric models have nothing to sparsify: they get RecBole's own trainer and a
    log line saying so.
    """
    base = get_trainer(config["MODEL_TYPE"], config["model"])
    if is_non_parametric(model):
        getLogger().info(
            set_color("DSL skipped", "pink")
            + f": {config['model']} is non-parametric (no trainable weights to sparsify); "
            f"training with {base.__name__} unchanged"
        )
        return base(config, model)
    return dsl_trainer_class(base)(config, model)

