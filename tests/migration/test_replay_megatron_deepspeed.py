"""Megatron-DeepSpeed command lines of each example family, with the JSONs their scripts write, replayed through
config resolution: each resolves to the numbers the Megatron-DeepSpeed run had, or is refused for a real
contradiction with a message. The command lines follow the public scripts of microsoft/Megatron-DeepSpeed
(examples_deepspeed/rebase, MoE, universal_checkpointing, pretrain_llama2_distributed.sh), at tiny sizes.
"""

import json

import pytest

from megatron.config import ConfigError, parse_config

WORLD = 2


def _json(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return str(path)


def _gpt_rebase(seq=64, gbs=8, mbs=2, tokens=64 * 8 * 10, precision="--fp16"):
    """rebase/ds_pretrain_gpt_125M.sh: sized in tokens, a far larger sample budget, fp16 JSON template."""
    return ["--override-opt_param-scheduler", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
            "--tensor-model-parallel-size", "1", "--init-method-std", "0.02",
            "--lr-decay-tokens", str(tokens), "--lr-warmup-tokens", str(seq * gbs * 2),
            "--micro-batch-size", str(mbs), "--exit-duration-in-mins", "30000000", "--global-batch-size", str(gbs),
            "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", str(seq),
            "--max-position-embeddings", str(seq), "--train-tokens", str(tokens),
            "--train-samples", str(tokens * 2 // seq), "--lr", "6.0e-4", "--min-lr", "1.0e-6",
            "--lr-decay-style", "cosine", "--split", "949,50,1", "--log-interval", "10", "--eval-interval", "100",
            "--eval-iters", "10", "--save-interval", "100", "--weight-decay", "0.1", "--clip-grad", "1.0",
            "--hysteresis", "2", "--num-workers", "0", precision, "--seed", "1234", "--load", "ckpt", "--save",
            "ckpt", "--no-async-tensor-model-parallel-allreduce", "--tensorboard-queue-size", "1",
            "--log-timers-to-tensorboard", "--log-batch-size-to-tensorboard", "--log-validation-ppl-to-tensorboard",
            "--tensorboard-dir", "tb", "--checkpoint-activations", "--log-optimizer-states-to-tensorboard",
            "--vocab-file", "gpt2-vocab.json", "--merge-file", "gpt2-merges.txt", "--data-path",
            "BookCorpusDataset_text_document", "--data-impl", "mmap",
            "--deepspeed", "--zero-stage", "1", "--pipeline-model-parallel-size", "1", "--no-pipeline-parallel",
            "--deepspeed-activation-checkpointing"]


def _fp16_template(gbs=8, mbs=2, stage=1, **extra):
    return {"train_batch_size": gbs, "train_micro_batch_size_per_gpu": mbs, "steps_per_print": 10,
            "zero_optimization": {"stage": stage}, "gradient_clipping": 1.0, "prescale_gradients": True,
            "fp16": {"enabled": True, "loss_scale": 0, "loss_scale_window": 500, "hysteresis": 2,
                     "min_loss_scale": 1, "initial_scale_power": 11},
            "wall_clock_breakdown": False, **extra}


def test_gpt_pretrain_sized_in_tokens_and_samples(tmp_path):
    ds = _json(tmp_path, "ds.json", _fp16_template())
    config = parse_config(_gpt_rebase() + ["--deepspeed_config", ds], world_size=WORLD)
    t = config.training
    assert (t.train_tokens, t.train_samples) == (5120, 160)
    assert t.train_iters == 160 // 8  # iterations from samples; the tokens (10 iterations' worth) stop it first
    assert t.lr_schedule_plan(64) == (1024, "tokens", 5120, "tokens")
    assert config.data.tokenizer_type == "GPT2BPETokenizer"
    assert config.recompute.recompute_granularity == "full"
    assert (config.precision.fp16, config.precision.initial_loss_scale) == (True, 2.0 ** 11)
    notes = "\n".join(config.notes)
    for expected in ("--data-impl mmap has no effect", "--no-async-tensor-model-parallel-allreduce has no effect",
                     "--log-timers-to-tensorboard has no effect", "GPT2BPETokenizer (Megatron-DeepSpeed's default)"):
        assert expected in notes, notes


def test_gpt_bf16_with_loss_scale_runs_and_says_it_does_not_apply(tmp_path):
    """universal_checkpointing/megatron_gpt/run_bf16.sh passes --loss-scale 12 with bf16."""
    ds = _json(tmp_path, "ds.json", {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 8, "steps_per_print": 1,
                                     "zero_optimization": {"stage": 1}, "bf16": {"enabled": True},
                                     "data_types": {"grad_accum_dtype": "fp32"}, "wall_clock_breakdown": False})
    argv = ["--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1", "--num-layers", "2",
            "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64", "--loss-scale", "12",
            "--max-position-embeddings", "64", "--micro-batch-size", "8", "--global-batch-size", "16",
            "--train-iters", "20", "--lr", "6.0e-3", "--min-lr", "6.0e-4", "--lr-decay-style", "cosine",
            "--log-interval", "1", "--eval-iters", "40", "--eval-interval", "10", "--data-path", "data",
            "--vocab-file", "v.json", "--merge-file", "m.txt", "--save-interval", "100", "--split", "98,2,0",
            "--clip-grad", "1.0", "--weight-decay", "0.1", "--adam-beta1", "0.9", "--adam-beta2", "0.95",
            "--init-method-std", "0.006", "--bf16", "--checkpoint-activations", "--exit-interval", "10",
            "--save", "ckpt", "--load", "ckpt", "--make-vocab-size-divisible-by", "256", "--tensorboard-dir", "tb",
            "--deepspeed", "--deepspeed_config=" + ds, "--zero-stage=1", "--deepspeed-activation-checkpointing",
            "--no-pipeline-parallel", "--universal-checkpoint"]
    config = parse_config(argv, world_size=WORLD)
    assert config.precision.bf16 and config.checkpoint.universal_checkpoint
    assert any("--loss-scale 12.0 has no effect: loss scaling applies to fp16 only, and this run is bf16" in note
               for note in config.notes), config.notes


def test_llama2_with_sentencepiece_tokenizer_and_gpu_flags(tmp_path):
    """pretrain_llama2_distributed.sh: GPTSentencePieceTokenizer, --distributed-backend nccl, --optimizer adam."""
    ds = _json(tmp_path, "ds.json", {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "steps_per_print": 1,
                                     "zero_optimization": {"stage": 1}, "bf16": {"enabled": True}})
    argv = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "1", "--num-layers", "2",
            "--hidden-size", "64", "--ffn-hidden-size", "176", "--num-attention-heads", "4",
            "--micro-batch-size", "2", "--global-batch-size", "8", "--seq-length", "64",
            "--max-position-embeddings", "64", "--train-iters", "10", "--save", "ckpt", "--load", "ckpt",
            "--data-path", "data", "--data-impl", "mmap", "--tokenizer-type", "GPTSentencePieceTokenizer",
            "--tokenizer-model", "tokenizer.model", "--split", "949,50,1", "--distributed-backend", "nccl",
            "--lr", "3e-4", "--lr-decay-style", "cosine", "--min-lr", "3e-5", "--weight-decay", "0.1",
            "--clip-grad", "1", "--lr-warmup-iters", "2", "--optimizer", "adam", "--adam-beta1", "0.9",
            "--adam-beta2", "0.95", "--log-interval", "1", "--save-interval", "10000", "--eval-interval", "1000",
            "--eval-iters", "10", "--bf16", "--no-query-key-layer-scaling", "--attention-dropout", "0",
            "--hidden-dropout", "0", "--use-rotary-position-embeddings", "--untie-embeddings-and-output-weights",
            "--swiglu", "--normalization", "rmsnorm", "--disable-bias-linear", "--num-key-value-heads", "2",
            "--deepspeed-activation-checkpointing", "--recompute-granularity", "full", "--recompute-method",
            "uniform", "--zero-stage=1", "--deepspeed_config=" + ds, "--deepspeed"]
    config = parse_config(argv, world_size=WORLD)
    assert config.data.tokenizer_type == "SentencePieceTokenizer"
    assert (config.model.position_embedding_type, config.model.normalization, config.model.swiglu) == \
        ("rope", "RMSNorm", True)
    assert config.parallel.distributed_backend == "nccl" and config.training.optimizer == "adam"
    assert any("--no-query-key-layer-scaling has no effect" in note for note in config.notes)
    assert any("--recompute-method uniform has no effect" in note for note in config.notes)


def test_moe_template_with_disabled_curriculum_block(tmp_path):
    """MoE/ds_config_gpt_TEMPLATE.json writes curriculum_learning with enabled false; DeepSpeed 0.19 fails on it
    inside initialize, so it is dropped at config time with a note."""
    curriculum = {"enabled": False, "curriculum_type": "seqlen", "min_difficulty": 80, "max_difficulty": 64,
                  "schedule_type": "fixed_linear", "schedule_config": {"total_curriculum_step": 100,
                                                                       "difficulty_step": 8}}
    ds = _json(tmp_path, "ds.json", _fp16_template(curriculum_learning=curriculum,
                                                   bf16={"enabled": False}))
    argv = [flag for flag in _gpt_rebase() if flag != "--no-pipeline-parallel"]
    config = parse_config(argv + ["--deepspeed_config", ds], world_size=WORLD)
    assert "curriculum_learning" not in config.deepspeed_config
    assert any("curriculum_learning in" in note and "disabled; dropped" in note for note in config.notes)


@pytest.mark.parametrize("block, key", [
    ({"enabled": True, "curriculum_type": "seqlen"}, "curriculum_learning"),
    ({"enabled": True, "data_sampling": {"enabled": True}}, "data_efficiency"),
    ({"weight_quantization": {"shared_parameters": {"enabled": True}}}, "compression_training"),
])
def test_enabled_legacy_blocks_are_refused_with_what_to_do(tmp_path, block, key):
    ds = _json(tmp_path, "ds.json", _fp16_template(**{key: block}))
    with pytest.raises(ConfigError, match=f"{key} in .* is enabled: .*remove the block"):
        parse_config(_gpt_rebase() + ["--deepspeed_config", ds], world_size=WORLD)


@pytest.mark.parametrize("typo, closest", [("zero_optimisation", "zero_optimization"),
                                           ("gradient_cliping", "gradient_clipping"),
                                           ("bf_16", "bf16")])
def test_mistyped_top_level_key_is_refused_with_the_closest_name(tmp_path, typo, closest):
    content = _fp16_template()
    content[typo] = content.pop("zero_optimization") if typo == "zero_optimisation" else {"enabled": True}
    ds = _json(tmp_path, "ds.json", content)
    with pytest.raises(ConfigError, match=f"unknown top-level key '{typo}'.*did you mean '{closest}'"):
        parse_config(_gpt_rebase() + ["--deepspeed_config", ds], world_size=WORLD)


def test_known_keys_come_from_deepspeed():
    from megatron.config.deepspeed_keys import known_top_level_keys

    keys = known_top_level_keys()
    for key in ("zero_optimization", "bf16", "fp16", "optimizer", "scheduler", "activation_checkpointing",
                "steps_per_print", "wall_clock_breakdown", "prescale_gradients", "data_types", "tensorboard",
                "flops_profiler", "checkpoint", "gradient_clipping", "train_batch_size"):
        assert key in keys, key
    assert "zero_optimisation" not in keys


@pytest.mark.parametrize("argv, json_changes, message", [
    (["--global-batch-size", "16"], {}, "--global-batch-size 16 contradicts train_batch_size=8"),
    (["--zero-stage", "2"], {}, "--zero-stage 2 contradicts zero_optimization.stage=1"),
    (["--bf16"], {}, "--bf16 contradicts fp16.enabled=true"),
])
def test_real_contradictions_keep_their_clear_error(tmp_path, argv, json_changes, message):
    ds = _json(tmp_path, "ds.json", {**_fp16_template(), **json_changes})
    base = [flag for flag in _gpt_rebase() if flag not in ("--fp16",)]
    base = [value for index, value in enumerate(base)
            if not (base[index - 1:index] == ["--global-batch-size"] and "--global-batch-size" in argv)
            and not (value == "--global-batch-size" and "--global-batch-size" in argv)]
    base = [value for index, value in enumerate(base)
            if not (("--zero-stage" in argv) and (value == "--zero-stage" or base[index - 1:index] == ["--zero-stage"]))]
    with pytest.raises(ConfigError, match=message):
        parse_config(base + argv + ["--deepspeed_config", ds], world_size=WORLD)


def test_save_interval_without_save_is_noted_not_refused():
    argv = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
            "--lr", "1e-3", "--train-iters", "10", "--save-interval", "5"]
    config = parse_config(argv, world_size=1)
    assert config.checkpoint.save_interval is None
    assert any("--save-interval 5 has no effect without --save" in note for note in config.notes)


def test_rampup_batch_size_sizes_the_run_like_megatron():
    argv = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
            "--lr", "1e-3", "--micro-batch-size", "2", "--global-batch-size", "16", "--rampup-batch-size", "4",
            "4", "48", "--train-samples", "160"]
    config = parse_config(argv, world_size=2)
    # Megatron's rule: ramp 4 -> 16 in 3 increments over 48 samples, one increment per 16 consumed samples:
    # batches 4,4,4,4 (16 consumed) 8,8 (32) 12,12 (56) then 16; whole batches within 160 samples: 14 steps.
    from megatron.config.run_length import rampup_of

    rampup = rampup_of(config.training)
    consumed, batches = 0, []
    while consumed + rampup.batch_size_at(consumed) <= 160:
        batches.append(rampup.batch_size_at(consumed))
        consumed += batches[-1]
    assert batches[:10] == [4, 4, 4, 4, 8, 8, 12, 12, 16, 16]
    assert config.training.train_iters == 14 == len(batches)
    with pytest.raises(ConfigError, match="must be multiples of micro batch 2 x data-parallel 2 = 4"):
        parse_config(argv[:-6] + ["--rampup-batch-size", "2", "2", "48", "--train-samples", "160"], world_size=2)
