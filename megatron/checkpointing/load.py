"""Resuming: find the newest complete checkpoint, check it, load it into the engine, restore the position.

Checks come before DeepSpeed opens a file: the manifest must exist (the save finished), every file must have
its recorded size (nothing truncated or missing), the parameters must match the model by name and full shape
(not another architecture), and the layout must equal this run's unless resharding was asked for
(``--universal-checkpoint``). Every file is then read with ``weights_only=True`` (safe_load.py).

Loading paths:
- same layout: DeepSpeed's ``load_checkpoint`` (bit-identical resume: weights, optimizer, scheduler, RNG);
- ``universal=True``: the checkpoint is converted once (universal.py) and loaded by DeepSpeed's universal
  loader into ZeRO-1/2 engines, by ours (universal_load.py) into ZeRO-0/3 engines.
"""

import os
from dataclasses import dataclass
from typing import Optional

from megatron.checkpointing.megatron_import.direct_load import (IMPORT_FOLDER, check_same_model, ensure_imported,
                                                                is_megatron_checkpoint)
from megatron.checkpointing.megatron_import.sources import detect_megatron_checkpoint, open_megatron_checkpoint
from megatron.checkpointing.manifest import (compare_parameters, file_problems, manifest_layout, raise_file_problems,
                                             read_manifest)
from megatron.checkpointing.parameters import global_parameter_table, model_name_function
from megatron.checkpointing.rng_state import load_rng_state
from megatron.checkpointing.safe_load import (CheckpointError, install_safe_checkpoint_engine, safe_torch_load,
                                              weights_only_torch_load)
from megatron.checkpointing.save import CLIENT_STATE_KEY, current_layout, deepspeed_engine, print_rank0, read_latest
from megatron.checkpointing.tokenizer_check import check_tokenizer
from megatron.checkpointing.universal import ensure_universal, universal_model_state_file, user_converted_universal
from megatron.checkpointing.universal_load import load_universal_into_engine
from megatron.core import comm


@dataclass
class ResumePoint:
    """Where a loaded checkpoint leaves training (all zero after --finetune)."""
    iteration: int
    consumed_train_samples: int
    consumed_train_tokens: Optional[int]
    folder: str
    saved_config: Optional[dict]
    rng_available: bool  # the checkpoint holds this rank's random streams for this layout

    def restore_rng(self):
        """Put every random stream of this rank back where it was at the save (no-op if unavailable)."""
        if self.rng_available:
            load_rng_state(self.folder, comm.get_rank())


def find_checkpoint(load_dir: str) -> Optional[str]:
    """The folder ``latest`` names, or None when ``load_dir`` holds no checkpoint yet."""
    tag = read_latest(load_dir)
    if tag is None:
        return None
    folder = os.path.join(load_dir, tag)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{os.path.join(load_dir, 'latest')} names {tag!r} but {folder} does not exist; "
                              f"point `latest` at an existing global_step* folder")
    return folder


def _verify_files_together(folder: str, manifest: dict):
    """Sizes on every rank; checksums split over the ranks (each reads 1/world of the bytes), the problems
    gathered so every rank raises the same error."""
    world = comm.get_world_size()
    problems = file_problems(folder, manifest, share=comm.get_rank(), shares=world)
    if world > 1:
        problems = sorted({problem for found in comm.all_gather_object(problems) for problem in found})
    raise_file_problems(folder, problems)


def _needs_resharding(saved, current, load_optimizer: bool) -> bool:
    if saved == current:
        return False
    same_model_split = (saved.tensor_model_parallel_size == current.tensor_model_parallel_size
                        and saved.pipeline_model_parallel_size == current.pipeline_model_parallel_size)
    # Weights alone live whole (per TP/PP rank) in the model files of ZeRO-0/1/2, whatever the DP size.
    weights_only_ok = not load_optimizer and saved.zero_stage < 3 and current.zero_stage < 3
    return not (same_model_split and weights_only_ok)


def _with_universal_flag(engine, value: bool):
    """DeepSpeed reads its load_universal switch at load time only; set it for this load and put it back."""
    previous = engine._config.load_universal_checkpoint
    engine._config.load_universal_checkpoint = value
    return previous


def _load_deepspeed(engine, load_dir: str, tag: str, *, universal: bool, load_optimizer: bool,
                    load_scheduler: bool, module_only: bool) -> dict:
    install_safe_checkpoint_engine(engine)
    previous = _with_universal_flag(engine, universal)
    try:
        with weights_only_torch_load():
            path, client_state = engine.load_checkpoint(load_dir, tag=tag, load_optimizer_states=load_optimizer,
                                                        load_lr_scheduler_states=load_scheduler,
                                                        load_module_only=module_only)
    finally:
        engine._config.load_universal_checkpoint = previous
    if path is None:
        raise CheckpointError(f"DeepSpeed found no checkpoint files for this rank in {os.path.join(load_dir, tag)}")
    return client_state or {}


def _load_ours(engine, folder: str, *, load_optimizer: bool, load_scheduler: bool) -> dict:
    load_universal_into_engine(engine, folder, load_optimizer=load_optimizer,
                               source_name=model_name_function(engine.module))
    state = safe_torch_load(universal_model_state_file(folder))
    if load_scheduler and engine.lr_scheduler is not None and state.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    if load_optimizer:
        engine.global_steps = state.get("global_steps", engine.global_steps)
        engine.global_samples = state.get("global_samples", engine.global_samples)
        engine.skipped_steps = state.get("skipped_steps", engine.skipped_steps)
    return state


def _refresh_derived_state(wrapper):
    """State a wrapper derives from the parameters rather than holding as parameters is re-derived after a
    load through its ``on_checkpoint_loaded()`` (the Megatron-schedule pipeline re-broadcasts the replica of
    the tied embedding table its last stage reads)."""
    hook = getattr(wrapper, "on_checkpoint_loaded", None)
    if callable(hook):
        hook()


def _restore_megatron_position(engine, record: dict) -> ResumePoint:
    """Iteration, samples, tokens and Adam's step of an imported ds_to_universal folder onto the engine and
    our LR schedule (Megatron's scheduler counts samples; ours keeps steps, samples and tokens)."""
    state = record["optimizer"]
    iteration = int(record["iteration"])
    samples = state["consumed_train_samples"]
    samples = iteration * engine.train_batch_size() if samples is None else samples
    tokens = state["consumed_train_tokens"]
    engine.global_steps, engine.global_samples = iteration, samples
    scheduler = engine.lr_scheduler
    if scheduler is not None and hasattr(scheduler, "load_state_dict"):
        position = {"num_steps": iteration, "num_samples": samples}
        if tokens is not None:
            position["num_tokens"] = tokens
        scheduler.load_state_dict(position)
    return ResumePoint(iteration, samples, tokens, None, None, False)


def _load_megatron_import(wrapper, engine, load_dir: str, *, finetune: bool, no_load_optim: bool,
                          log) -> ResumePoint:
    """A Megatron-DeepSpeed / Megatron-LM folder, through a copy converted once next to it: a ds_to_universal
    folder resumes (weights, Adam moments and step, iteration, samples, LR position); others give weights only."""
    kind = detect_megatron_checkpoint(load_dir)
    if kind == "megatron-lm":
        refusal = (f"{load_dir} is a Megatron-LM checkpoint: megatron-ds imports its weights only (its optimizer "
                   f"state is laid out by Megatron-LM's own buffers, which do not map onto this model's), so pass "
                   f"--finetune to start from them at iteration 0")
    else:
        tag = os.path.basename(open_megatron_checkpoint(load_dir).folder) if kind else "global_stepN"
        refusal = (f"{load_dir} is a Megatron-DeepSpeed checkpoint ({kind}) whose optimizer state is partitioned "
                   f"by its own ZeRO groups, which do not map onto this model's: run Megatron-DeepSpeed's "
                   f"ds_to_universal on it first to carry the optimizer state and resume (python -m "
                   f"deepspeed.checkpoint.ds_to_universal --input_folder {os.path.join(load_dir, tag)} "
                   f"--output_folder {os.path.join(load_dir, tag)}_universal), or pass --finetune to start from "
                   f"its weights at iteration 0")
    if not finetune and kind != "megds-universal":
        raise CheckpointError(refusal)
    record = ensure_imported(load_dir, log=log)
    check_same_model(getattr(engine.module, "config", None), record["model"], load_dir)
    if not finetune and not record.get("optimizer"):
        raise CheckpointError(f"{record['source']} is a ds_to_universal folder without exp_avg.pt / exp_avg_sq.pt "
                              f"files (no optimizer state to resume from): convert a checkpoint saved with its "
                              f"optimizer state, or pass --finetune to start from its weights at iteration 0")
    folder = os.path.join(load_dir, IMPORT_FOLDER)
    load_optimizer = not (finetune or no_load_optim)
    load_universal_into_engine(engine, folder, load_optimizer=load_optimizer,
                               source_name=model_name_function(engine.module))
    _refresh_derived_state(wrapper)
    if finetune:
        log(f"> loaded the weights of {record['source']} ({record['kind']}, iteration {record['iteration']}) "
            f"through {folder}; starting at iteration 0 (finetune)")
        return ResumePoint(0, 0, 0, folder, None, False)
    resumed = _restore_megatron_position(engine, record)
    resumed.folder = folder
    log(f"> resumed {record['source']} ({record['kind']}) at iteration {resumed.iteration} through {folder}: "
        f"{'Adam moments and step carried' if load_optimizer else 'optimizer state not loaded (--no-load-optim)'}"
        f", {resumed.consumed_train_samples} samples consumed; random streams continue from this run's seed")
    return resumed


def load_checkpoint(engine, load_dir: str, *, finetune: bool = False, no_load_optim: bool = False,
                    no_load_rng: bool = False, universal: bool = False, restore_rng: bool = True,
                    log=None, tokenizer: Optional[dict] = None) -> Optional[ResumePoint]:
    """Resume ``engine`` from the newest checkpoint in ``load_dir``; None when there is none (fresh start).

    A collective: every rank calls it. ``finetune`` loads weights only and restarts at iteration 0;
    ``universal`` reshards from any saved layout, including between the plain model and its pipeline forms
    (parameters are matched by GPTModel names, see parameters.py). With
    ``restore_rng=False`` the random streams are left for the caller to restore (``ResumePoint.restore_rng``)
    at the moment that matches the save, e.g. after building a DataLoader iterator, which draws from torch's
    default generator.
    """
    log = log or print_rank0
    wrapper, engine = engine, deepspeed_engine(engine)
    if is_megatron_checkpoint(load_dir):
        return _load_megatron_import(wrapper, engine, load_dir, finetune=finetune, no_load_optim=no_load_optim,
                                     log=log)
    folder = find_checkpoint(load_dir)
    # Megatron-DeepSpeed's workflow: a folder the user converted with ds_to_universal, named in
    # latest_universal, is what --universal-checkpoint loads (as DeepSpeed's own loader does).
    user_universal = user_converted_universal(load_dir, log=log) if universal else None
    if user_universal is not None:
        source_tag, _ = user_universal
        if folder is not None and os.path.basename(folder) != source_tag:
            log(f"> note: `latest` names {os.path.basename(folder)}, but --universal-checkpoint loads "
                f"{user_universal[1]} (converted from {source_tag}, named in latest_universal); delete "
                f"latest_universal to reshard the newest checkpoint instead")
        folder = os.path.join(load_dir, source_tag)
    if folder is None:
        log(f"> no checkpoint in {load_dir} (no `latest` file): starting from scratch")
        return None
    tag = os.path.basename(folder)
    manifest = read_manifest(folder)
    if not finetune:
        check_tokenizer(folder, manifest.get("tokenizer"), tokenizer)
    _verify_files_together(folder, manifest)
    saved_layout, layout = manifest_layout(manifest), current_layout(engine)
    parameters = global_parameter_table(engine.module)
    compare_parameters(folder, manifest["parameters"], parameters,
                       same_tp=saved_layout.tensor_model_parallel_size == layout.tensor_model_parallel_size)

    load_optimizer = not (finetune or no_load_optim)
    # DeepSpeed loads ZeRO-3 weights without optimizer state through zero_to_fp32, which refuses TP > 1.
    reshard = universal or (layout.zero_stage == 3 and not load_optimizer)
    if not reshard and _needs_resharding(saved_layout, layout, load_optimizer):
        raise CheckpointError(f"checkpoint {folder} was saved with {saved_layout.describe()}, this run is "
                              f"{layout.describe()}: pass --universal-checkpoint to reshard it (converted once, "
                              f"next to it), or run with the saved layout")

    if reshard:
        universal_folder = user_universal[1] if user_universal else ensure_universal(load_dir, tag, log=log)
        # DeepSpeed's universal loader finds parameters by this module's own names, which are the folder's
        # (GPTModel names) only for the plain model; pipeline forms and ZeRO-0/3 go through ours.
        plain_names = not callable(getattr(engine.module, "to_model_name", None))
        if layout.zero_stage in (1, 2) and load_optimizer and plain_names:
            state = _load_deepspeed(engine, load_dir, os.path.basename(universal_folder), universal=True,
                                    load_optimizer=load_optimizer, load_scheduler=not finetune,
                                    module_only=finetune)
        else:
            state = _load_ours(engine, universal_folder, load_optimizer=load_optimizer,
                               load_scheduler=not finetune)
    else:
        state = _load_deepspeed(engine, load_dir, tag, universal=False, load_optimizer=load_optimizer,
                                load_scheduler=not finetune, module_only=finetune)

    _refresh_derived_state(wrapper)
    training = state.get(CLIENT_STATE_KEY) or manifest["training"]
    rng_available = not (finetune or no_load_rng) and saved_layout == layout
    if not rng_available and not (finetune or no_load_rng):
        log(f"> RNG states not restored: {folder} was saved with {saved_layout.describe()}, this run is "
            f"{layout.describe()}; random streams continue from this run's seed")
    if user_universal is not None:
        log(f"> loaded the universal checkpoint {user_universal[1]} (made by ds_to_universal)")
    log(f"> loaded {folder} (iteration {training['iteration']}, {saved_layout.describe()}"
        f"{', resharded' if reshard else ''}{', weights only (finetune)' if finetune else ''})")
    if finetune:
        return ResumePoint(0, 0, 0, folder, manifest.get("config"), False)
    resumed = ResumePoint(int(training["iteration"]), int(training["consumed_train_samples"]),
                          training.get("consumed_train_tokens"), folder, manifest.get("config"), rng_available)
    if restore_rng:
        resumed.restore_rng()
    return resumed
