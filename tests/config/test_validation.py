"""validate(): every check fails with a message that names the numbers and the fix."""

import re

import pytest

from megatron.config import ConfigError, RunConfig, parse_config

BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "8", "--seq-length", "128",
        "--train-iters", "10", "--lr", "1e-4"]

# (extra flags, world size, exact fragment of the message)
CASES = {
    "world_not_divisible": (["--tensor-model-parallel-size", "4"], 6,
                            "world size 6 is not divisible by tensor-parallel 4 x pipeline-parallel 1 = 4"),
    "world_not_divisible_tp_pp": (["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6,
                                  "world size 6 is not divisible by tensor-parallel 2 x pipeline-parallel 2 = 4"),
    "heads_not_divisible_by_tp": (["--num-attention-heads", "6", "--hidden-size", "96",
                                   "--tensor-model-parallel-size", "4"], 4,
                                  "--num-attention-heads 6 is not divisible by --tensor-model-parallel-size 4"),
    "kv_heads_not_divisible_by_tp": (["--num-key-value-heads", "2", "--tensor-model-parallel-size", "4"], 4,
                                     "--num-key-value-heads 2 is not divisible by --tensor-model-parallel-size 4"),
    "hidden_not_divisible_by_heads": (["--hidden-size", "100"], 1,
                                      "--hidden-size 100 is not divisible by --num-attention-heads 8"),
    "kv_heads_not_dividing_heads": (["--num-key-value-heads", "3"], 1,
                                    "--num-key-value-heads 3 does not divide --num-attention-heads 8"),
    "ffn_not_divisible_by_tp": (["--ffn-hidden-size", "100", "--tensor-model-parallel-size", "8"], 8,
                                "--ffn-hidden-size 100 is not divisible by --tensor-model-parallel-size 8"),
    "swiglu_too_small": (["--hidden-size", "16", "--swiglu"], 1,
                         "--swiglu with --hidden-size 16: Megatron's rule int(8*h/3/64)*64 gives 0"),
    "layers_not_divisible_by_pp": (["--num-layers", "3", "--pipeline-model-parallel-size", "2"], 2,
                                   "--num-layers 3 is not divisible by --pipeline-model-parallel-size 2"),
    "interleaved_layers": (["--num-layers", "8", "--pipeline-model-parallel-size", "2",
                            "--num-layers-per-virtual-pipeline-stage", "3"], 2,
                           "--num-layers 8 is not divisible by pipeline-parallel 2 x "
                           "--num-layers-per-virtual-pipeline-stage 3 = 6"),
    "interleaved_one_chunk": (["--num-layers", "8", "--pipeline-model-parallel-size", "2",
                               "--num-layers-per-virtual-pipeline-stage", "4"], 2,
                              "--num-layers 8 / (PP 2 x 4 layers per chunk) gives 1 chunk per stage"),
    "interleaved_micro_batches": (["--num-layers", "8", "--pipeline-model-parallel-size", "2",
                                   "--num-layers-per-virtual-pipeline-stage", "2", "--global-batch-size", "3"], 2,
                                  "(gradient accumulation steps 3) to be a multiple of the pipeline size 2"),
    "interleaved_needs_pp": (["--num-layers-per-virtual-pipeline-stage", "2"], 1,
                             "the interleaved schedule needs --pipeline-model-parallel-size >= 2"),
    "interleaved_without_chunks": (["--pipeline-model-parallel-size", "2", "--pipeline-schedule", "interleaved"], 2,
                                   "--pipeline-schedule interleaved needs --num-layers-per-virtual-pipeline-stage"),
    "chunks_without_interleaved": (["--pipeline-model-parallel-size", "2", "--pipeline-schedule", "1f1b",
                                    "--num-layers-per-virtual-pipeline-stage", "1"], 2,
                                   "--num-layers-per-virtual-pipeline-stage 1 only applies to --pipeline-schedule "
                                   "interleaved, not 1f1b"),
    "deepspeed_schedule_with_zero2": (["--pipeline-model-parallel-size", "2", "--pipeline-schedule", "deepspeed",
                                       "--zero-stage", "2"], 2,
                                      "--pipeline-schedule deepspeed with ZeRO-2: DeepSpeed's PipelineEngine only "
                                      "supports ZeRO-0/1; use --pipeline-schedule 1f1b"),
    "expert_parallel_not_dividing_dp": (["--expert-model-parallel-size", "3"], 4,
                                        "--expert-model-parallel-size 3 does not divide the data-parallel size 4"),
    "expert_parallel_without_experts": (["--expert-model-parallel-size", "2"], 2,
                                        "--expert-model-parallel-size 2 configure Mixture-of-Experts layers, but "
                                        "--num-experts is not set"),
    "bf16_and_fp16": (["--bf16", "--fp16"], 1, "bf16 and fp16 are both enabled"),
    "partition_without_recompute": (["--partition-activations"], 1,
                                    "--partition-activations needs --recompute-granularity full (or "
                                    "--checkpoint-activations); it is None"),
    "partition_with_selective": (["--partition-activations", "--recompute-granularity", "selective"], 1,
                                 "--partition-activations needs --recompute-granularity full"),
    "contiguous_without_partition": (["--checkpoint-activations", "--contiguous-checkpointing"], 1,
                                     "--contiguous-checkpointing needs --partition-activations"),
    "cpu_checkpoint_without_recompute": (["--checkpoint-in-cpu"], 1,
                                         "--checkpoint-in-cpu has no effect without activation recomputation"),
    "sequence_parallel_tp1": (["--sequence-parallel"], 1,
                              "--sequence-parallel needs --tensor-model-parallel-size > 1"),
    "sequence_parallel_seq": (["--sequence-parallel", "--tensor-model-parallel-size", "8", "--seq-length", "100",
                               "--max-position-embeddings", "128"], 8,
                              "--seq-length 100 is not divisible by 8"),
    "seq_longer_than_positions": (["--max-position-embeddings", "64"], 1,
                                  "--seq-length 128 exceeds --max-position-embeddings 64 with learned positions"),
    "offload_optimizer_without_zero": (["--offload-optimizer", "cpu"], 1,
                                       "--offload-optimizer cpu needs ZeRO stage >= 1 (DeepSpeed offloads the "
                                       "partitioned optimizer), but the stage is 0"),
    "offload_param_without_zero3": (["--offload-param", "cpu", "--zero-stage", "2"], 1,
                                    "--offload-param cpu needs ZeRO-3 (only stage 3 partitions parameters), "
                                    "but the stage is 2"),
    "warmup_fraction_and_iters": (["--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "5"], 1,
                                  "--lr-warmup-fraction 0.1 and --lr-warmup-iters 5 both set the warmup"),
    "warmup_fraction_above_one": (["--lr-warmup-fraction", "1.5"], 1, "--lr-warmup-fraction 1.5 must be <= 1"),
    "warmup_past_decay": (["--lr-warmup-iters", "10"], 1,
                          "warmup of 10 steps does not end before the decay ends at --lr-decay-iters 10"),
    "min_lr_above_lr": (["--min-lr", "1e-3"], 1, "--min-lr 0.001 is above --lr 0.0001"),
    "minimum": (["--micro-batch-size", "0"], 1, "--micro-batch-size 0 must be >= 1"),
    "minimum_generic": (["--num-layers", "0"], 1, "--num-layers 0 must be >= 1"),
    "dropout": (["--hidden-dropout", "1.0"], 1, "--hidden-dropout 1.0 must be in [0, 1)"),
    "data_path_pairs": (["--data-path", "0.5", "a", "b"], 1,
                        "--data-path 0.5 a b: with several datasets give alternating `weight prefix` pairs"),
    "data_path_weights": (["--data-path", "a", "b"], 1, "--data-path a b: with several datasets"),
    "split": (["--split", "90,x"], 1, "--split '90,x' must be up to three non-negative numbers"),
    "finetune_without_load": (["--finetune"], 1, "--finetune has no effect without --load"),
    "keep_last_without_save": (["--keep-last", "3"], 1, "--keep-last 3 has no effect without --save"),
    "universal_without_load": (["--universal-checkpoint"], 1, "--universal-checkpoint has no effect without --load"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validation_error_names_the_numbers(case):
    flags, world, fragment = CASES[case]
    with pytest.raises(ConfigError) as error:
        parse_config(BASE + flags, world_size=world)
    assert fragment in str(error.value)


@pytest.mark.parametrize("missing", ["--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length",
                                     "--train-iters", "--lr"])
def test_required_flags(missing):
    index = BASE.index(missing)
    flags = BASE[:index] + BASE[index + 2:]
    with pytest.raises(ConfigError, match=re.escape(f"{missing} is required")):
        parse_config(flags)


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError):
        parse_config(BASE + ["--bf16", "--fp16"])


def test_learned_positions_check_does_not_apply_to_rope():
    config = parse_config(BASE + ["--position-embedding-type", "rope", "--max-position-embeddings", "64"])
    assert config.model.max_position_embeddings == 64


def test_valid_pipeline_layouts_pass():
    interleaved = parse_config(BASE + ["--num-layers", "8", "--pipeline-model-parallel-size", "2",
                                       "--num-layers-per-virtual-pipeline-stage", "2", "--global-batch-size", "4"],
                               world_size=2)
    assert interleaved.parallel.pipeline_schedule == "interleaved"
    zero3_1f1b = parse_config(BASE + ["--pipeline-model-parallel-size", "2", "--zero-stage", "3"], world_size=4)
    assert (zero3_1f1b.parallel.pipeline_schedule, zero3_1f1b.parallel.data_parallel_size) == ("1f1b", 2)


def test_validate_runs_on_stored_configs_too():
    stored = parse_config(BASE).to_dict()
    stored["training"]["lr_warmup_fraction"] = 0.1
    stored["training"]["lr_warmup_iters"] = 3
    with pytest.raises(ConfigError, match="--lr-warmup-fraction 0.1 and --lr-warmup-iters 3 both set the warmup"):
        RunConfig.from_dict(stored)


def test_pipeline_partition_method_flag_is_parsed_and_checked():
    from megatron.config import ConfigError, parse_config

    base = ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
            "--micro-batch-size", "1", "--global-batch-size", "4", "--train-iters", "2", "--lr", "1e-3",
            "--pipeline-model-parallel-size", "2"]
    config = parse_config(base + ["--partition-method", "uniform"], world_size=2)
    assert config.parallel.pipeline_partition_method == "uniform"
    assert parse_config(base, world_size=2).parallel.pipeline_partition_method == "type:TransformerLayer"
    with pytest.raises(ConfigError, match=r"--partition-method 'balanced' is not a partition method DeepSpeed's PipelineModule"):
        parse_config(base + ["--partition-method", "balanced"], world_size=2)
