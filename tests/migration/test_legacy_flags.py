"""Every flag of Megatron-DeepSpeed's GPT pre-training argument set is honoured, a logged no-op, or refused with
a message; none is an unknown flag (a bare argparse error) and none is silently ignored.

The flag list is microsoft/Megatron-DeepSpeed's megatron/arguments.py (301 flags), written out here; `=1` marks
flags that take a value (1 is a placeholder: a value the flag cannot take must give a ConfigError naming it).
"""

import pytest

from megatron.config import ConfigError, parse_config
from megatron.config.legacy_flags import LEGACY_FLAGS

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
        "--micro-batch-size", "1", "--lr", "1e-3", "--train-iters", "10"]

MEGATRON_DEEPSPEED_FLAGS = (
    "--DDP-impl=1", "--accumulate-allreduce-grads-in-fp32", "--adam-beta1=1", "--adam-beta2=1", "--adam-eps=1",
    "--adlr-autoresume", "--adlr-autoresume-interval=1", "--aml-data-download-path=1", "--apply-layernorm-1p",
    "--apply-residual-connection-post-layernorm", "--attention-dropout=1", "--attention-softmax-in-fp32",
    "--batch-size=1", "--bert-embedder-type=1", "--bert-load=1", "--bert-no-binary-head", "--bf16",
    "--biencoder-projection-dim=1", "--biencoder-shared-query-context-model", "--block-data-path=1",
    "--checkpoint-activations", "--checkpoint-in-cpu", "--checkpoint-num-layers=1", "--classes-fraction=1",
    "--clip-grad=1", "--contigious-checkpointing", "--cpu-optimizer", "--cpu_torch_adam", "--create-moe-param-group",
    "--data-cache-path=1", "--data-efficiency-curriculum-learning", "--data-impl=1", "--data-parallel-random-init",
    "--data-path=1", "--data-per-class-fraction=1", "--dataloader-type=1", "--decoder-num-layers=1",
    "--decoder-seq-length=1", "--deepspeed-activation-checkpointing", "--dino-bottleneck-size=1",
    "--dino-freeze-last-layer=1", "--dino-head-hidden-size=1", "--dino-local-crops-number=1",
    "--dino-local-img-size=1", "--dino-norm-last-layer", "--dino-teacher-temp=1", "--dino-warmup-teacher-temp=1",
    "--dino-warmup-teacher-temp-epochs=1", "--disable-bias-linear", "--disable-mem-efficient-ln",
    "--disable-moe-token-dropping", "--disable-moe-top2-2nd-expert-sampling",
    "--distribute-checkpointed-activations", "--distribute-saved-activations", "--distributed-backend=1",
    "--distributed-timeout-minutes=1", "--ds-inference", "--ds-sequence-parallel-fpdt",
    "--ds-sequence-parallel-fpdt-chunk-size=1", "--ds-sequence-parallel-fpdt-offloading",
    "--ds-sequence-parallel-size=1", "--ds_fused_adam", "--embedding-path=1", "--embedding-weights-in-fp32",
    "--empty-unused-memory-level=1", "--enable-expert-tensor-parallelism", "--enable-zbh1-exact-semantics",
    "--enable-zbh1-pipeline", "--encoder-num-layers=1", "--encoder-seq-length=1", "--end-weight-decay=1",
    "--eod-mask-loss", "--eval-interval=1", "--eval-iters=1", "--evidence-data-path=1", "--exit-duration-in-mins=1",
    "--exit-interval=1", "--exit-on-missing-checkpoint", "--exit-signal-handler", "--expert-interval=1",
    "--ffn-hidden-size=1", "--finetune", "--force-ds-sequence-parallel", "--fp16", "--fp16-lm-cross-entropy",
    "--fp32-residual-connection", "--fp8-amax-compute-algo=1", "--fp8-amax-history-len=1", "--fp8-e4m3",
    "--fp8-hybrid", "--fp8-interval=1", "--fp8-margin=1", "--global-batch-size=1", "--head-lr-mult=1",
    "--hidden-dropout=1", "--hidden-size=1", "--hidden-size-teacher=1", "--hysteresis=1", "--ict-head-size=1",
    "--ict-load=1", "--img-h=1", "--img-w=1", "--indexer-batch-size=1", "--indexer-log-interval=1", "--inference",
    "--inference-batch-times-seqlen-threshold=1", "--init-method-std=1", "--init-method-xavier-uniform",
    "--initial-loss-scale=1", "--iter-per-epoch=1", "--kd", "--kd-alpha-ce=1", "--kd-beta-ce=1", "--kd-temp=1",
    "--kill-switch-file=1", "--kv-channels=1", "--layernorm-epsilon=1", "--lazy-mpu-init=1", "--load=1",
    "--load-tag=1", "--load-teacher=1", "--local-rank=1", "--log-batch-size-to-tensorboard", "--log-interval=1",
    "--log-memory-to-tensorboard", "--log-num-zeros-in-grad", "--log-optimizer-states-to-tensorboard",
    "--log-params-norm", "--log-timers-to-tensorboard", "--log-validation-ppl-to-tensorboard",
    "--log-world-size-to-tensorboard", "--loss-scale=1", "--loss-scale-window=1", "--lr=1", "--lr-decay-iters=1",
    "--lr-decay-samples=1", "--lr-decay-style=1", "--lr-decay-tokens=1", "--lr-warmup-fraction=1",
    "--lr-warmup-iters=1", "--lr-warmup-samples=1", "--lr-warmup-tokens=1", "--make-vocab-size-divisible-by=1",
    "--mask-factor=1", "--mask-prob=1", "--mask-type=1", "--max-position-embeddings=1", "--max-tokens-to-oom=1",
    "--merge-file=1", "--micro-batch-size=1", "--min-loss-scale=1", "--min-lr=1", "--mlp-type=1", "--mmap-warmup",
    "--model-parallel-size=1", "--moe-eval-capacity-factor=1", "--moe-expert-parallel-size=1", "--moe-loss-coeff=1",
    "--moe-min-capacity=1", "--moe-train-capacity-factor=1", "--mos", "--no-async-tensor-model-parallel-allreduce",
    "--no-barrier-with-level-1-timing", "--no-bias-dropout-fusion", "--no-bias-gelu-fusion",
    "--no-contiguous-buffers-in-local-ddp", "--no-data-sharding", "--no-fp8-wgrad",
    "--no-gradient-accumulation-fusion", "--no-initialization", "--no-load-lr-state", "--no-load-optim",
    "--no-load-rng", "--no-log-learnig-rate-to-tensorboard", "--no-log-loss-scale-to-tensorboard",
    "--no-masked-softmax-fusion", "--no-persist-layer-norm", "--no-pipeline-parallel", "--no-position-embedding",
    "--no-query-key-layer-scaling", "--no-save-optim", "--no-save-rng", "--no-scatter-gather-tensors-in-pipeline",
    "--normalization=1", "--num-attention-heads=1", "--num-attention-heads-teacher=1", "--num-channels=1",
    "--num-classes=1", "--num-experts=1", "--num-experts-switch=1", "--num-experts-teacher=1",
    "--num-key-value-heads=1", "--num-layers=1", "--num-layers-per-virtual-pipeline-stage=1",
    "--num-layers-teacher=1", "--num-workers=1", "--onnx-safe=1", "--openai-gelu", "--optimizer=1",
    "--output-bert-embeddings", "--overlap-p2p-communication", "--override-opt_param-scheduler",
    "--partition-activations", "--patch-dim=1", "--pipeline-model-parallel-size=1",
    "--pipeline-model-parallel-split-rank=1", "--profile-backward", "--query-in-block-prob=1",
    "--rampup-batch-size=1", "--random-ltd", "--recompute-activations", "--recompute-granularity=1",
    "--recompute-method=1", "--recompute-num-layers=1", "--remote-device=1", "--repeated-dataloader",
    "--reset-attention-mask", "--reset-iteration", "--reset-position-ids", "--retriever-report-topk-accuracies=1",
    "--retriever-score-scaling", "--retriever-seq-length=1", "--retro-add-retriever", "--retro-cyclic-train-iters=1",
    "--retro-encoder-attention-dropout=1", "--retro-encoder-hidden-dropout=1", "--retro-encoder-layers=1",
    "--retro-workdir=1", "--return-data-index", "--rotary-percent=1", "--rotary-position-embeddings-theta=1",
    "--sample-rate=1", "--save=1", "--save-interval=1", "--seed=1", "--seq-length=1", "--sequence-parallel",
    "--sgd-momentum=1", "--short-seq-prob=1", "--skip-train", "--split=1", "--squared-relu",
    "--standalone-embedding-stage", "--start-weight-decay=1", "--swiglu", "--swin-backbone-type=1",
    "--synchronize-each-layer", "--tensor-model-parallel-size=1", "--tensorboard-dir=1",
    "--tensorboard-log-interval=1", "--tensorboard-queue-size=1", "--test-data-path=1", "--timing-log-level=1",
    "--timing-log-option=1", "--titles-data-path=1", "--tokenizer-model=1", "--tokenizer-type=1", "--topk=1",
    "--train-data-exact-num-epochs=1", "--train-data-path=1", "--train-desc-path=1", "--train-doc-idx-path=1",
    "--train-idx-path=1", "--train-iters=1", "--train-sample-idx-path=1", "--train-samples=1",
    "--train-shuffle-idx-path=1", "--train-tokens=1", "--transformer-impl=1", "--trust-remote-code",
    "--universal-checkpoint", "--untie-embeddings-and-output-weights", "--use-checkpoint-args",
    "--use-checkpoint-opt_param-scheduler", "--use-cpu-initialization", "--use-dataset-only=1",
    "--use-distributed-optimizer", "--use-flash-attn", "--use-flash-attn-builder", "--use-flash-attn-triton",
    "--use-flash-attn-v2", "--use-one-sent-docs", "--use-pin-memory", "--use-ring-exchange-p2p",
    "--use-rotary-position-embeddings", "--use-tutel", "--valid-data-path=1", "--vision-backbone-type=1",
    "--vision-pretraining", "--vision-pretraining-type=1", "--vocab-extra-ids=1", "--vocab-file=1", "--vocab-size=1",
    "--wandb-exp-name=1", "--wandb-project=1", "--wandb-save-dir=1", "--warmup=1", "--weight-decay=1",
    "--weight-decay-incr-style=1", "--zero-contigious-gradients", "--zero-reduce-scatter",)

# Added by the MoE, context-parallel and fault-handling features (other branches); until those are merged they
# must still fail with a message that names the flag.
OWNED_ELSEWHERE = {
    # MoE flags of Megatron-DeepSpeed without an equivalent here (the others are MoEConfig fields or aliases).
    "--mlp-type", "--num-experts-switch", "--disable-moe-top2-2nd-expert-sampling", "--enable-expert-tensor-parallelism",
    "--force-ds-sequence-parallel", "--ds-sequence-parallel-fpdt",
    "--ds-sequence-parallel-fpdt-chunk-size", "--ds-sequence-parallel-fpdt-offloading",
    "--distributed-timeout-minutes", "--exit-signal-handler", "--kill-switch-file", "--exit-on-missing-checkpoint",
}


def _split(spec):
    flag, _, value = spec.partition("=")
    return flag, ([flag, value] if value else [flag])


@pytest.mark.parametrize("spec", MEGATRON_DEEPSPEED_FLAGS)
def test_megatron_deepspeed_flag_is_honoured_noted_or_refused(spec):
    flag, argv = _split(spec)
    try:
        config = parse_config(BASE + argv, world_size=1)
    except ConfigError as error:
        message = str(error)
        if flag in OWNED_ELSEWHERE:
            assert flag in message, message
        else:
            assert "unknown flag" not in message and "unrecognized" not in message, message
        return
    spec_entry = LEGACY_FLAGS.get(flag)
    if spec_entry is not None and spec_entry.kind == "noop":
        assert any(note.startswith(f"flag {flag}") and "has no effect here because" in note
                   for note in config.notes), config.notes
    if spec_entry is not None and spec_entry.kind == "rewrite":
        assert any(note.startswith(flag) for note in config.notes), config.notes


def test_every_flag_of_the_set_has_a_disposition():
    """Guards the list above: flags this project neither defines nor catalogues are exactly the ones other
    features own."""
    from megatron.config.cli import build_parser

    known = set(build_parser()._option_string_actions) | set(LEGACY_FLAGS)
    missing = {_split(spec)[0] for spec in MEGATRON_DEEPSPEED_FLAGS} - known
    assert missing <= OWNED_ELSEWHERE, sorted(missing - OWNED_ELSEWHERE)


@pytest.mark.parametrize("argv, replacement", [
    (["--model-parallel-size", "1"], ("parallel", "tensor_model_parallel_size", 1)),
    (["--batch-size", "2"], ("training", "micro_batch_size", 2)),
    (["--rotary-position-embeddings-theta", "500000", "--use-rotary-position-embeddings"],
     ("model", "rotary_base", 500000.0)),
    (["--recompute-activations"], ("recompute", "recompute_granularity", "selective")),
    (["--checkpoint-activations", "--distribute-checkpointed-activations"],
     ("recompute", "partition_activations", True)),
    (["--tokenizer-type", "GPTSentencePieceTokenizer", "--tokenizer-model", "t.model"],
     ("data", "tokenizer_type", "SentencePieceTokenizer")),
    (["--tokenizer-type=Llama2Tokenizer", "--tokenizer-model", "t.model"],
     ("data", "tokenizer_type", "SentencePieceTokenizer")),
    (["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", "t.json"], ("data", "tokenizer_type", "HFTokenizer")),
    (["--vocab-file", "v.json", "--merge-file", "m.txt"], ("data", "tokenizer_type", "GPT2BPETokenizer")),
    (["--optimizer", "sgd", "--sgd-momentum", "0.8"], ("training", "sgd_momentum", 0.8)),
    (["--distributed-backend", "nccl"], ("parallel", "distributed_backend", "nccl")),
])
def test_older_spellings_and_names_map_to_what_exists(argv, replacement):
    group, name, value = replacement
    config = parse_config(BASE + argv, world_size=1)
    assert getattr(getattr(config, group), name) == value
    assert config.notes or group in ("training", "parallel")


@pytest.mark.parametrize("argv, message", [
    (["--data-impl", "cached"], "--data-impl cached: only mmap is possible here"),
    (["--recompute-method", "block"], "--recompute-method block: only uniform is possible here"),
    (["--fp32-residual-connection"], "--fp32-residual-connection is not supported here"),
    (["--wandb-project", "x"], "use --tensorboard-dir"),
    (["--cpu-optimizer"], "use --offload-optimizer cpu"),
    (["--no-such-flag"], "unknown flag --no-such-flag"),
    (["--micro-batch-sise", "2"], r"did you mean --micro-batch-size\?"),
    (["--fp16", "--bf16"], "choose one"),
    (["--train-samples", "100"], "--train-iters 10 and --train-samples 100 both set the length of the run"),
    (["--lr-warmup-iters", "2", "--lr-warmup-tokens", "64"], "each set the LR warmup; keep one"),
])
def test_refusals_name_the_flag_and_the_replacement(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE + argv, world_size=1)


def test_unknown_flag_error_is_a_config_error_not_system_exit():
    from megatron.config.cli import parse_command_line

    with pytest.raises(ConfigError, match="unknown flag --zero-stag .did you mean --zero-stage"):
        parse_command_line(["--zero-stag", "1"])
