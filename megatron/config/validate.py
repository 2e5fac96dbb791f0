"""validate(config): every check that can fail before an engine is built, each naming the numbers and the fix.

Called by parse_config / resolve_config / RunConfig.from_dict. Checks run in a fixed order and the first
failure raises, so a config with two mistakes reports the more basic one (the parallel layout) first.
"""

import dataclasses
import math
from typing import TYPE_CHECKING

from megatron.config.errors import ConfigError
from megatron.config.fields import CHOICES, MINIMUM, REQUIRED, canonical_choice, flag_of

if TYPE_CHECKING:
    from megatron.config.run_config import RunConfig


def validate(config: "RunConfig") -> None:
    from megatron.config.run_config import GROUPS

    for name, _ in GROUPS:
        _check_fields(getattr(config, name))
    _check_parallel_layout(config)
    _check_model(config)
    _check_moe(config)
    _check_context_parallel(config)
    _check_pipeline(config)
    _check_memory(config)
    _check_training(config)
    _check_data_and_checkpoint(config)
    _check_deepspeed_dict(config)


def _check_fields(group) -> None:
    """required / minimum / choices, read from each field's metadata."""
    for field in dataclasses.fields(group):
        value = getattr(group, field.name)
        if value is None:
            if field.metadata.get(REQUIRED):
                raise ConfigError(f"{flag_of(field)} is required ({field.metadata['help']})")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            # NaN compares False with everything, so it would pass every minimum; inf passes them all too.
            raise ConfigError(f"{flag_of(field)} {value} is not a finite number; give a finite value "
                              f"({field.metadata['help']})")
        minimum = field.metadata.get(MINIMUM)
        if minimum is not None and value < minimum:
            raise ConfigError(f"{flag_of(field)} {value} must be >= {minimum}")
        choices = field.metadata.get(CHOICES)
        if choices is not None and (canonical_choice(value, choices) != value):
            raise ConfigError(f"{flag_of(field)} {value!r} is not one of {', '.join(map(str, choices))}")


def _check_parallel_layout(config: "RunConfig") -> None:
    p = config.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if p.context_parallel_size > 1 and p.ds_sequence_parallel_size > 1:
        raise ConfigError(f"--context-parallel-size {p.context_parallel_size} (ring attention) and "
                          f"--ds-sequence-parallel-size {p.ds_sequence_parallel_size} (Ulysses) both split the "
                          f"sequence over the same context-parallel axis; combining them is not supported: keep "
                          f"one of the two")
    cp = p.context_parallel_axis_size
    if p.world_size % (tp * pp * cp):
        what = f"tensor-parallel {tp} x pipeline-parallel {pp}" + (f" x context-parallel {cp}" if cp > 1 else "")
        raise ConfigError(f"world size {p.world_size} is not divisible by {what} = {tp * pp * cp}; change "
                          f"--tensor-model-parallel-size / --pipeline-model-parallel-size"
                          + (" / --context-parallel-size / --ds-sequence-parallel-size" if cp > 1 else "")
                          + " or the number of ranks")
    if p.data_parallel_size != p.world_size // (tp * pp * cp):
        raise ConfigError(f"data_parallel_size {p.data_parallel_size} != world size {p.world_size} / "
                          f"(TP {tp} x PP {pp}" + (f" x CP {cp}" if cp > 1 else "")
                          + "); leave it unset to derive it")
    ep = p.expert_model_parallel_size
    if p.data_parallel_size % ep:
        raise ConfigError(f"--expert-model-parallel-size {ep} does not divide the data-parallel size "
                          f"{p.data_parallel_size} (experts are carved out of data-parallel ranks); use a "
                          f"divisor of {p.data_parallel_size}")
    if p.sequence_parallel and tp == 1:
        # Megatron silently turns it off; an error tells the user the flag bought nothing.
        raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size > 1 (it splits activations "
                          "across tensor-parallel ranks; with TP=1 there is nothing to split); drop the flag "
                          "or raise TP")
    if p.sequence_parallel and config.model.seq_length % tp:
        raise ConfigError(f"--sequence-parallel splits the sequence over {tp} tensor-parallel ranks, but "
                          f"--seq-length {config.model.seq_length} is not divisible by {tp}")


def _check_model(config: "RunConfig") -> None:
    m, tp = config.model, config.parallel.tensor_model_parallel_size
    heads, kv_heads = m.num_attention_heads, m.num_key_value_heads
    if m.kv_channels is None:
        raise ConfigError(f"--hidden-size {m.hidden_size} is not divisible by --num-attention-heads {heads}; "
                          f"change one, or give --kv-channels explicitly")
    if heads % tp:
        raise ConfigError(f"--num-attention-heads {heads} is not divisible by --tensor-model-parallel-size "
                          f"{tp}; each tensor-parallel rank needs whole heads")
    if heads % kv_heads:
        raise ConfigError(f"--num-key-value-heads {kv_heads} does not divide --num-attention-heads {heads}; "
                          f"every key/value head must serve the same number of query heads")
    if kv_heads % tp:
        raise ConfigError(f"--num-key-value-heads {kv_heads} is not divisible by --tensor-model-parallel-size "
                          f"{tp}; each tensor-parallel rank needs whole key/value heads")
    if m.ffn_hidden_size is None:
        raise ConfigError(f"--swiglu with --hidden-size {m.hidden_size}: Megatron's rule "
                          f"int(8*h/3/64)*64 gives 0; pass --ffn-hidden-size explicitly")
    if m.ffn_hidden_size % tp:
        raise ConfigError(f"--ffn-hidden-size {m.ffn_hidden_size} is not divisible by "
                          f"--tensor-model-parallel-size {tp}; the MLP is split column-wise over TP")
    if m.position_embedding_type == "learned_absolute" and m.seq_length > m.max_position_embeddings:
        raise ConfigError(f"--seq-length {m.seq_length} exceeds --max-position-embeddings "
                          f"{m.max_position_embeddings} with learned positions; raise the table size or "
                          f"shorten the sequence")
    for name in ("attention_dropout", "hidden_dropout"):
        if not 0.0 <= getattr(m, name) < 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(m, name)} must be in [0, 1)")
    if m.padded_vocab_size is not None and m.vocab_size is not None and (
            m.padded_vocab_size < m.vocab_size or m.padded_vocab_size % tp):
        raise ConfigError(f"padded_vocab_size {m.padded_vocab_size} must be >= vocab_size {m.vocab_size} and "
                          f"divisible by TP {tp}; leave it unset to derive it")


def _check_moe(config: "RunConfig") -> None:
    moe, p = config.moe, config.parallel
    ep, tp = p.expert_model_parallel_size, p.tensor_model_parallel_size
    if not moe.enabled:
        changed = ["/".join((flag_of(f),) + f.metadata["aliases"]) for f in dataclasses.fields(moe)
                   if f.name not in ("num_experts", "create_moe_param_group", "moe_eval_capacity_factor")
                   and getattr(moe, f.name) != f.default]
        if ep > 1:
            changed.insert(0, f"--expert-model-parallel-size {ep}")
        if changed:
            raise ConfigError(f"{', '.join(changed)} configure Mixture-of-Experts layers, but --num-experts is not "
                              f"set, so the model is dense and they would do nothing; add --num-experts N (or "
                              f"--model-family mixtral), or drop them")
        return
    counts, layers = moe.num_experts, config.model.num_layers
    moe_layers = len(range(0, layers, moe.moe_layer_freq))
    if any(not isinstance(n, int) or n < 1 for n in counts):
        raise ConfigError(f"--num-experts {' '.join(map(str, counts))}: every value must be a positive integer")
    if len(counts) not in (1, moe_layers):
        raise ConfigError(f"--num-experts got {len(counts)} values, but the model has {moe_layers} MoE layers "
                          f"(--num-layers {layers}, --moe-layer-freq {moe.moe_layer_freq}); give one value, or "
                          f"one per MoE layer")
    if len(set(counts)) > 1:
        raise ConfigError(f"--num-experts {' '.join(map(str, counts))}: different expert counts per layer are not "
                          f"built here; give every MoE layer the same number of experts")
    experts = counts[0]
    if experts % ep:
        raise ConfigError(f"--num-experts {experts} is not divisible by --expert-model-parallel-size {ep}; every "
                          f"expert-parallel rank holds the same number of experts, so choose an EP that divides "
                          f"{experts}")
    if moe.moe_router_topk > experts:
        raise ConfigError(f"--moe-router-topk {moe.moe_router_topk} exceeds --num-experts {experts}; a token "
                          f"cannot go to more experts than exist: lower the top-k")
    if moe.expert_tensor_parallel_size != 1:
        raise ConfigError(f"--expert-tensor-parallel-size {moe.expert_tensor_parallel_size}: expert tensor "
                          f"parallelism is not built; experts are replicated over the tensor-parallel ranks "
                          f"(use 1, with --sequence-parallel when TP > 1)")
    if tp > 1 and not p.sequence_parallel:
        raise ConfigError(f"MoE layers with --tensor-model-parallel-size {tp} need --sequence-parallel: experts "
                          f"are replicated over TP and each TP rank routes its own slice of the sequence")
    if moe.moe_pad_expert_input_to_capacity and moe.moe_expert_capacity_factor is None:
        raise ConfigError("--moe-pad-expert-input-to-capacity needs --moe-expert-capacity-factor (dropless "
                          "routing has no capacity to pad to)")
    if ep > 1 and config.zero.stage == 0 and config.training.clip_grad > 0:
        # Measured: DeepSpeed's ZeRO-0 fp32 clipping computes the norm from per-rank expert norms averaged over
        # ranks, so clipped runs drift from the single-rank run (7e-4 after 10 steps in tests/moe).
        raise ConfigError(f"--expert-model-parallel-size {ep} with ZeRO-0 and --clip-grad "
                          f"{config.training.clip_grad}: DeepSpeed's ZeRO-0 clipping miscounts expert gradients "
                          f"across expert-parallel ranks; use ZeRO-1 or ZeRO-2, or --clip-grad 0")
    if config.recompute.recompute_granularity == "full" and (moe.moe_aux_loss_coeff or moe.moe_z_loss_coeff):
        # Full recomputation runs the first forward without autograd: the aux losses kept from it have no graph.
        raise ConfigError("--recompute-granularity full with MoE aux/z losses (--moe-aux-loss-coeff, "
                          "--moe-z-loss-coeff) is not supported: the recomputed layers' losses would get no "
                          "gradient; use --recompute-granularity selective, or set both coefficients to 0")
    if config.recompute.recompute_granularity == "full" and moe.moe_router_enable_expert_bias:
        # The recomputed forward routes the tokens again: the load behind the bias update would count twice.
        raise ConfigError("--moe-router-enable-expert-bias with --recompute-granularity full is not supported: "
                          "the recomputed router would count every token twice in the expert load; use "
                          "--recompute-granularity selective")
    if config.checkpoint.universal_checkpoint:
        raise ConfigError("MoE layers (--num-experts) with --universal-checkpoint: resharding MoE checkpoints "
                          "(across EP, TP, PP or ZeRO) is not supported yet; resume in the layout that saved")
    if config.zero.stage == 3:
        raise ConfigError("MoE layers (--num-experts) with ZeRO-3 are not supported yet: ZeRO-3 would partition "
                          "each rank's own experts over the whole data-parallel group; use ZeRO-1 or ZeRO-2")
    if p.pipeline_model_parallel_size > 1 and p.pipeline_schedule != "1f1b":
        # DeepSpeed's PipelineEngine passes only activations between its layers: the aux losses of MoE layers
        # on earlier stages would have no way into its loss. Interleaved is not tested with MoE yet.
        raise ConfigError(f"MoE layers (--num-experts) with --pipeline-schedule {p.pipeline_schedule} are not "
                          f"supported (DeepSpeed's PipelineEngine has no path for the MoE aux losses of its "
                          f"stages; interleaved is untested); use --pipeline-schedule 1f1b")
    if p.pipeline_model_parallel_size > 1 and moe.moe_layer_freq > 1:
        # Measured: a stage without MoE layers has no expert optimizer group, and DeepSpeed's per-group norm
        # all-reduce over the stages then waits forever.
        raise ConfigError(f"--moe-layer-freq {moe.moe_layer_freq} with --pipeline-model-parallel-size "
                          f"{p.pipeline_model_parallel_size}: every pipeline stage must hold MoE layers (a stage "
                          f"without expert parameters deadlocks DeepSpeed's gradient norm); use --moe-layer-freq 1")
    if p.pipeline_model_parallel_size > 1 and moe.moe_router_enable_expert_bias:
        # The pipeline's train step does not run the after-step bias update; refused rather than ignored.
        raise ConfigError(f"--moe-router-enable-expert-bias with --pipeline-model-parallel-size "
                          f"{p.pipeline_model_parallel_size} is not supported yet (the pipeline schedules do not "
                          f"update the expert biases); use the aux loss (--moe-aux-loss-coeff) or PP 1")


def _check_context_parallel(config: "RunConfig") -> None:
    """Ring attention (--context-parallel-size) and Ulysses (--ds-sequence-parallel-size) preconditions."""
    p, m = config.parallel, config.model
    ring, ulysses, tp = p.context_parallel_size, p.ds_sequence_parallel_size, p.tensor_model_parallel_size
    if ring > 1 and m.seq_length % (2 * ring):
        raise ConfigError(f"--seq-length {m.seq_length} is not divisible by 2 x --context-parallel-size {ring} "
                          f"= {2 * ring}; ring attention cuts every sequence into 2 CP equal zig-zag chunks "
                          f"(for causal load balance): use a multiple of {2 * ring}")
    if ulysses > 1:
        if m.seq_length % ulysses:
            raise ConfigError(f"--seq-length {m.seq_length} is not divisible by --ds-sequence-parallel-size "
                              f"{ulysses}; each Ulysses rank holds an equal share of the sequence")
        heads, kv_heads = m.num_attention_heads // tp, m.num_key_value_heads // tp
        if heads % ulysses or kv_heads % ulysses:
            raise ConfigError(
                f"--ds-sequence-parallel-size {ulysses} must divide the attention heads per tensor-parallel "
                f"rank: --num-attention-heads {m.num_attention_heads} / TP {tp} = {heads} query heads and "
                f"--num-key-value-heads {m.num_key_value_heads} / TP {tp} = {kv_heads} key/value heads; Ulysses "
                f"gives each rank whole heads. Choose a degree dividing both, or change TP or the head counts")
    degree = p.context_parallel_axis_size
    if degree == 1:
        return
    flag = "--context-parallel-size" if ring > 1 else "--ds-sequence-parallel-size"
    if m.attention_dropout > 0:
        raise ConfigError(f"{flag} {degree} with --attention-dropout {m.attention_dropout}: context-parallel "
                          f"attention computes the softmax blockwise (ring) or through all-to-all (Ulysses) "
                          f"and draws no dropout mask on the probabilities; set --attention-dropout 0 (Llama "
                          f"recipes already do)")
    # Whole runs are proven equal to one rank (tests/context_parallel/test_whole_runs.py) for ring and Ulysses,
    # alone and with TP (+ --sequence-parallel), with ZeRO 0-3, ZeRO-2 with the optimizer offloaded, full and
    # selective recomputation, and ring with PP under the 1F1B schedule. What those runs do not cover is
    # refused rather than left to chance.
    zero, recompute = config.zero, config.recompute
    unproven = [name for name, present in (
        (f"--pipeline-schedule {p.pipeline_schedule} (only 1f1b is proven with CP; pass --pipeline-schedule "
         f"1f1b)", p.pipeline_model_parallel_size > 1 and p.pipeline_schedule != "1f1b"),
        ("--num-experts (MoE)", config.moe.enabled),
        ("--partition-activations", recompute.partition_activations),
        ("--rampup-batch-size", config.training.rampup_batch_size is not None),
        (f"--offload-optimizer with ZeRO-{zero.stage} (only ZeRO-2 is proven with CP)",
         zero.offload_optimizer != "none" and zero.stage != 2),
        ("--offload-param", zero.offload_param != "none"),
    ) if present]
    if unproven:
        drop = " and ".join(name.split(" (")[0] for name in unproven)
        raise ConfigError(f"{flag} {degree} is not supported together with {', '.join(unproven)}: context-"
                          f"parallel training is proven for ring and Ulysses attention with tensor (and "
                          f"sequence) parallelism, ZeRO 0-3, ZeRO-2 optimizer offload, full and selective "
                          f"recomputation and the 1F1B pipeline schedule only; drop {drop} or run with {flag} 1")


def _check_pipeline(config: "RunConfig") -> None:
    p, layers = config.parallel, config.model.num_layers
    pp, schedule, per_chunk = p.pipeline_model_parallel_size, p.pipeline_schedule, \
        p.num_layers_per_virtual_pipeline_stage
    if layers % pp:
        raise ConfigError(f"--num-layers {layers} is not divisible by --pipeline-model-parallel-size {pp}; "
                          f"every stage needs the same number of layers")
    method = p.pipeline_partition_method
    if method not in ("uniform", "parameters") and not (method.startswith("type:") and len(method) > 5):
        raise ConfigError(f"--partition-method {method!r} is not a partition method DeepSpeed's PipelineModule knows; use "
                          f"type:TransformerLayer, uniform or parameters")
    if schedule == "deepspeed" and config.zero.stage >= 2:
        raise ConfigError(f"--pipeline-schedule deepspeed with ZeRO-{config.zero.stage}: DeepSpeed's "
                          f"PipelineEngine only supports ZeRO-0/1; use --pipeline-schedule 1f1b (or "
                          f"interleaved), which supports ZeRO-2/3, or lower the ZeRO stage")
    if pp > 1 and schedule in ("1f1b", "interleaved") and config.precision.fp16:
        # Every stage's engine would keep its own dynamic loss scale; only the last stage's loss is scaled.
        raise ConfigError(f"--pipeline-schedule {schedule} does not support fp16 (per-stage loss scales); use "
                          f"--bf16, or --pipeline-schedule deepspeed with ZeRO-0/1")
    if pp > 1 and schedule == "interleaved" and config.zero.stage >= 2 and config.zero.offload_optimizer != "none":
        # DeepSpeed offloads only the gradients of the accumulation-ending backward, which holds one chunk.
        raise ConfigError(f"--pipeline-schedule interleaved cannot offload the ZeRO-{config.zero.stage} optimizer "
                          f"(--offload-optimizer {config.zero.offload_optimizer}); use --pipeline-schedule 1f1b, "
                          f"ZeRO-1, or drop the offload")
    if per_chunk is None:
        if schedule == "interleaved":
            raise ConfigError("--pipeline-schedule interleaved needs --num-layers-per-virtual-pipeline-stage")
        return
    if schedule != "interleaved":
        raise ConfigError(f"--num-layers-per-virtual-pipeline-stage {per_chunk} only applies to "
                          f"--pipeline-schedule interleaved, not {schedule}; drop one")
    if pp < 2:
        raise ConfigError("the interleaved schedule needs --pipeline-model-parallel-size >= 2")
    if layers % (pp * per_chunk):
        raise ConfigError(f"--num-layers {layers} is not divisible by pipeline-parallel {pp} x "
                          f"--num-layers-per-virtual-pipeline-stage {per_chunk} = {pp * per_chunk}")
    chunks = layers // (pp * per_chunk)
    if chunks < 2:
        raise ConfigError(f"--num-layers {layers} / (PP {pp} x {per_chunk} layers per chunk) gives 1 chunk "
                          f"per stage, which is plain 1F1B; lower --num-layers-per-virtual-pipeline-stage or "
                          f"drop it")
    micro_batches = config.training.gradient_accumulation_steps
    if micro_batches is not None and micro_batches % pp:
        raise ConfigError(f"the interleaved schedule needs the number of micro-batches (gradient "
                          f"accumulation steps {micro_batches}) to be a multiple of the pipeline size {pp}; "
                          f"change --global-batch-size or --micro-batch-size")


def _check_memory(config: "RunConfig") -> None:
    precision, zero, recompute = config.precision, config.zero, config.recompute
    if precision.bf16 and precision.fp16:
        raise ConfigError("bf16 and fp16 are both enabled (by flags or the DeepSpeed JSON); choose one")
    if not math.log2(precision.initial_loss_scale).is_integer():
        raise ConfigError(f"--initial-loss-scale {precision.initial_loss_scale} is not a power of 2; DeepSpeed "
                          f"takes fp16.initial_scale_power = log2 of it")
    if zero.offload_optimizer != "none" and zero.stage < 1:
        raise ConfigError(f"--offload-optimizer {zero.offload_optimizer} needs ZeRO stage >= 1 (DeepSpeed "
                          f"offloads the partitioned optimizer), but the stage is {zero.stage}")
    if zero.offload_param != "none" and zero.stage != 3:
        raise ConfigError(f"--offload-param {zero.offload_param} needs ZeRO-3 (only stage 3 partitions "
                          f"parameters), but the stage is {zero.stage}")
    if recompute.partition_activations and recompute.recompute_granularity != "full":
        # Selective recomputation saves tensor-parallel-sharded tensors; partitioning those across TP
        # gives silently wrong gradients (see DEEPSPEED_ON_CPU.md).
        raise ConfigError(f"--partition-activations needs --recompute-granularity full (or "
                          f"--checkpoint-activations); it is {recompute.recompute_granularity}")
    if recompute.contiguous_checkpointing and not recompute.partition_activations:
        raise ConfigError("--contiguous-checkpointing needs --partition-activations (DeepSpeed's rule)")
    for name in ("checkpoint_in_cpu", "synchronize_each_layer", "profile_backward"):
        if getattr(recompute, name) and recompute.recompute_granularity is None:
            raise ConfigError(f"--{name.replace('_', '-')} has no effect without activation recomputation; "
                              f"add --recompute-granularity full or drop it")


def _check_training(config: "RunConfig") -> None:
    t, dp = config.training, config.parallel.data_parallel_size
    if t.lr is None:
        raise ConfigError("--lr is required (or optimizer.params.lr in the DeepSpeed JSON)")
    if t.global_batch_size is None or t.gradient_accumulation_steps is None:
        raise ConfigError("global_batch_size / gradient_accumulation_steps are unset: build the config with "
                          "parse_config() or resolve_config(), which derive them")
    if t.micro_batch_size * t.gradient_accumulation_steps * dp != t.global_batch_size:
        raise ConfigError(f"global batch {t.global_batch_size} != micro {t.micro_batch_size} x gradient "
                          f"accumulation {t.gradient_accumulation_steps} x data-parallel {dp}")
    if t.lr_warmup_fraction is not None and t.lr_warmup_iters:
        raise ConfigError(f"--lr-warmup-fraction {t.lr_warmup_fraction} and --lr-warmup-iters "
                          f"{t.lr_warmup_iters} both set the warmup; drop one")
    if t.lr_warmup_fraction is not None and t.lr_warmup_fraction > 1:
        raise ConfigError(f"--lr-warmup-fraction {t.lr_warmup_fraction} must be <= 1")
    if t.optimizer == "sgd" and config.zero.offload_optimizer != "none":
        raise ConfigError("--optimizer sgd with --offload-optimizer cpu: the offloaded optimizer is "
                          "DeepSpeedCPUAdam; use --optimizer adam or drop the offload")
    json_type = str(config.deepspeed_config.get("optimizer", {}).get("type", "")).lower()
    if t.optimizer == "sgd" and config.deepspeed_builds_optimizer and json_type != "sgd":
        raise ConfigError(f"--optimizer sgd contradicts optimizer.type={json_type!r} in the DeepSpeed JSON; drop one")
    if t.min_lr > t.lr:
        raise ConfigError(f"--min-lr {t.min_lr} is above --lr {t.lr}")
    if config.deepspeed_builds_scheduler and not t.counts_schedule_in_iterations:
        raise ConfigError("the DeepSpeed JSON's scheduler block counts optimizer steps, but the run or its "
                          "schedule is sized in samples/tokens (--train-samples, --train-tokens, --lr-*-samples, "
                          "--lr-*-tokens, --rampup-batch-size); drop the scheduler block (Megatron's schedule "
                          "is built from the flags) or size everything in iterations")
    if t.lr_decay_style != "constant" and not config.deepspeed_builds_scheduler and \
            t.counts_schedule_in_iterations:
        if t.warmup_iters >= t.lr_decay_iters:
            raise ConfigError(f"warmup of {t.warmup_iters} steps does not end before the decay ends at "
                              f"--lr-decay-iters {t.lr_decay_iters} (Megatron's rule); shorten the warmup or "
                              f"lengthen the decay")
    elif t.lr_decay_style != "constant" and not config.deepspeed_builds_scheduler:
        warmup, warmup_unit, decay, decay_unit = t.lr_schedule_plan(config.model.seq_length)
        in_tokens = {"samples": config.model.seq_length, "tokens": 1}
        if warmup * in_tokens[warmup_unit] >= decay * in_tokens[decay_unit]:
            raise ConfigError(f"warmup of {warmup} {warmup_unit} does not end before the decay ends at {decay} "
                              f"{decay_unit} (Megatron's rule); shorten the warmup or lengthen the decay")


def _check_data_and_checkpoint(config: "RunConfig") -> None:
    data, ckpt = config.data, config.checkpoint
    for name in ("data_path", "train_data_path", "valid_data_path", "test_data_path"):
        paths = getattr(data, name)
        if paths is not None and len(paths) > 1:
            weights = paths[0::2]
            if len(paths) % 2 or not all(_is_number(w) for w in weights):
                raise ConfigError(f"--{name.replace('_', '-')} {' '.join(paths)}: with several datasets give "
                                  f"alternating `weight prefix` pairs, e.g. 0.7 a_text 0.3 b_text")
    if data.data_path and data.train_data_path:
        raise ConfigError("--data-path and --train-data-path both name the training data; use --data-path with "
                          "--split, or --train-data-path with --valid-data-path")
    if (data.valid_data_path or data.test_data_path) and not data.train_data_path:
        raise ConfigError("--valid-data-path / --test-data-path need --train-data-path (with --data-path the "
                          "splits come from --split)")
    parts = data.split.replace("/", ",").split(",")
    if not 1 <= len(parts) <= 3 or not all(_is_number(p) and float(p) >= 0 for p in parts) or \
            sum(float(p) for p in parts) <= 0:
        raise ConfigError(f"--split {data.split!r} must be up to three non-negative numbers with a positive "
                          f"sum, e.g. 969,30,1")
    if config.training.skip_train:
        if not ckpt.load:
            raise ConfigError("--skip-train evaluates a checkpoint: add --load DIR (the folder training saved to)")
        if ckpt.save:
            raise ConfigError("--skip-train saves nothing (no step is taken): drop --save")
        if config.training.eval_iters == 0:
            raise ConfigError("--skip-train with --eval-iters 0 has nothing to evaluate: give --eval-iters N")
    # --save-interval without --save is only logged (Megatron-DeepSpeed accepted it; see migration.py).
    needs = {"finetune": "load", "no_load_optim": "load", "no_load_rng": "load",
             "universal_checkpoint": "load", "use_checkpoint_args": "load", "keep_last": "save"}
    for name, target in needs.items():
        value = getattr(ckpt, name)
        if value not in (None, False) and getattr(ckpt, target) is None:
            shown = f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")
            raise ConfigError(f"{shown} has no effect without --{target}; add --{target} DIR or drop it")


def _check_deepspeed_dict(config: "RunConfig") -> None:
    """The stored DeepSpeed dict must state what the groups state (catches hand-edited or stale dicts)."""
    ds, t = config.deepspeed_config, config.training
    expected = {
        ("train_batch_size",): t.global_batch_size,
        ("train_micro_batch_size_per_gpu",): t.micro_batch_size,
        ("gradient_accumulation_steps",): t.gradient_accumulation_steps,
        ("zero_optimization", "stage"): config.zero.stage,
        ("gradient_clipping",): t.clip_grad,
    }
    for keys, value in expected.items():
        node = ds
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if node != value:
            raise ConfigError(f"deepspeed_config {'.'.join(keys)}={node!r} disagrees with the resolved value "
                              f"{value!r}; build the config with parse_config()/resolve_config()")
    for name in ("bf16", "fp16"):
        enabled = bool((ds.get(name) or (ds.get("bfloat16") if name == "bf16" else None) or {}).get("enabled"))
        if enabled != getattr(config.precision, name):
            raise ConfigError(f"deepspeed_config {name}.enabled={enabled} disagrees with the resolved "
                              f"{name}={getattr(config.precision, name)}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
