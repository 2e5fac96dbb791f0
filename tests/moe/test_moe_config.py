"""MoE flags: Megatron-LM names, Megatron-DeepSpeed aliases, the mixtral preset, and every bad input rejected
by parse_config (before any process group or engine exists) with a message naming cause and fix."""

import pytest

from megatron.config import ConfigError, parse_config

BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "8", "--seq-length", "128",
        "--train-iters", "10", "--lr", "1e-4"]

# (extra flags, world size, exact fragment of the message)
BAD = {
    "experts_not_divisible_by_ep": (["--num-experts", "6", "--expert-model-parallel-size", "4"], 4,
                                    "--num-experts 6 is not divisible by --expert-model-parallel-size 4"),
    "ep_not_dividing_dp": (["--num-experts", "6", "--expert-model-parallel-size", "3"], 4,
                           "--expert-model-parallel-size 3 does not divide the data-parallel size 4"),
    "topk_above_experts": (["--num-experts", "2", "--moe-router-topk", "3"], 1,
                           "--moe-router-topk 3 exceeds --num-experts 2"),
    "moe_flag_without_experts": (["--moe-aux-loss-coeff", "0.01"], 1,
                                 "--moe-aux-loss-coeff/--moe-loss-coeff configure Mixture-of-Experts layers, but "
                                 "--num-experts is not set"),
    "meg_ds_alias_without_experts": (["--topk", "1"], 1, "--moe-router-topk/--topk configure"),
    "ep_without_experts": (["--moe-expert-parallel-size", "2"], 2,
                           "--expert-model-parallel-size 2 configure Mixture-of-Experts layers"),
    "per_layer_list_wrong_length": (["--num-experts", "4", "4", "4"], 1, "--num-experts got 3 values, but the "
                                    "model has 4 MoE layers"),
    "per_layer_list_uneven": (["--num-experts", "4", "8", "4", "4"], 1,
                              "different expert counts per layer are not built here"),
    "expert_tensor_parallel": (["--num-experts", "4", "--expert-tensor-parallel-size", "2"], 1,
                               "--expert-tensor-parallel-size 2: expert tensor parallelism is not built"),
    "tp_without_sequence_parallel": (["--num-experts", "4", "--tensor-model-parallel-size", "2"], 2,
                                     "MoE layers with --tensor-model-parallel-size 2 need --sequence-parallel"),
    "pad_without_capacity": (["--num-experts", "4", "--moe-pad-expert-input-to-capacity"], 1,
                             "--moe-pad-expert-input-to-capacity needs --moe-expert-capacity-factor"),
    "zero3": (["--num-experts", "4", "--zero-stage", "3"], 2, "MoE layers (--num-experts) with ZeRO-3 are not "
              "supported yet"),
    # PP 2 with ZeRO-0/1 picks DeepSpeed's PipelineEngine by default
    "deepspeed_pipeline": (["--num-experts", "4", "--pipeline-model-parallel-size", "2"], 2,
                           "MoE layers (--num-experts) with --pipeline-schedule deepspeed are not supported"),
    "interleaved_pipeline": (["--num-experts", "4", "--pipeline-model-parallel-size", "2", "--num-layers-per-"
                              "virtual-pipeline-stage", "1"], 2, "with --pipeline-schedule interleaved are not"),
    "pipeline_stage_without_moe": (["--num-experts", "4", "--pipeline-model-parallel-size", "2",
                                    "--pipeline-schedule", "1f1b", "--moe-layer-freq", "2"], 2,
                                   "every pipeline stage must hold MoE layers"),
    "pipeline_expert_bias": (["--num-experts", "4", "--pipeline-model-parallel-size", "2", "--pipeline-schedule",
                              "1f1b", "--moe-router-enable-expert-bias"], 2,
                             "--moe-router-enable-expert-bias with --pipeline-model-parallel-size 2"),
    "universal_checkpoint": (["--num-experts", "4", "--load", "/tmp/x", "--universal-checkpoint"], 1,
                             "resharding MoE checkpoints (across EP, TP, PP or ZeRO) is not supported yet"),
    "full_recompute_with_expert_bias": (["--num-experts", "4", "--moe-router-enable-expert-bias",
                                         "--recompute-granularity", "full"], 1,
                                        "the recomputed router would count every token twice"),
    "negative_bias_update_rate": (["--num-experts", "4", "--moe-router-bias-update-rate", "-1"], 1,
                                  "--moe-router-bias-update-rate"),
    "full_recompute_with_aux_loss": (["--num-experts", "4", "--moe-aux-loss-coeff", "0.01",
                                      "--recompute-granularity", "full"], 1,
                                     "--recompute-granularity full with MoE aux/z losses"),
    "zero0_clipping_with_ep": (["--num-experts", "4", "--expert-model-parallel-size", "2", "--zero-stage", "0"], 2,
                               "DeepSpeed's ZeRO-0 clipping miscounts expert gradients"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_moe_input_is_refused_with_cause_and_fix(case):
    flags, world, fragment = BAD[case]
    with pytest.raises(ConfigError) as error:
        parse_config(BASE + flags, world_size=world)
    assert fragment in str(error.value)


def test_megatron_deepspeed_aliases_mean_the_megatron_lm_flags():
    meg_ds = parse_config(BASE + ["--num-experts", "4", "4", "4", "4", "--moe-expert-parallel-size", "2", "--topk",
                                  "1", "--moe-loss-coeff", "0.1", "--moe-train-capacity-factor", "1.5",
                                  "--moe-min-capacity", "4", "--expert-interval", "1", "--create-moe-param-group", "--zero-stage", "1"],
                          world_size=2)
    megatron_lm = parse_config(BASE + ["--num-experts", "4", "4", "4", "4", "--expert-model-parallel-size", "2",
                                       "--moe-router-topk", "1", "--moe-aux-loss-coeff", "0.1",
                                       "--moe-expert-capacity-factor", "1.5", "--moe-min-capacity", "4",
                                       "--moe-layer-freq", "1", "--zero-stage", "1"], world_size=2)
    assert meg_ds.moe == megatron_lm.moe and meg_ds.parallel == megatron_lm.parallel
    assert meg_ds.moe.moe_eval_capacity_factor == 1.5 and meg_ds.moe.experts == 4
    dropless = parse_config(BASE + ["--num-experts", "4", "--disable-moe-token-dropping"], world_size=1)
    assert dropless.moe.moe_expert_capacity_factor is None


def test_mixtral_preset_is_llama_with_eight_experts_top2():
    config = parse_config(BASE + ["--model-family", "mixtral"], world_size=1)
    assert config.moe.num_experts == (8,) and config.moe.moe_router_topk == 2
    assert config.model.swiglu and config.model.normalization == "RMSNorm"
    assert config.model.position_embedding_type == "rope"
    assert [config.moe.is_moe_layer(i) for i in range(4)] == [True] * 4
    every_other = parse_config(BASE + ["--num-experts", "4", "--moe-layer-freq", "2"], world_size=1)
    assert [every_other.moe.is_moe_layer(i) for i in range(4)] == [True, False, True, False]
