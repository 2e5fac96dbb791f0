"""Megatron-LM's pre-training flags (NVIDIA/Megatron-LM megatron/training/arguments.py, 396 flags, written out
here): none is an unknown flag. Each is a flag of this project, a catalogued legacy flag (no-op, rewrite or
refusal), or belongs to a family this project refuses or ignores as a whole (RL, inference server, Mamba, MLA,
FSDP, CUDA graphs, ...), each with its reason. Flags of MoE, context parallelism and fault handling are added by
those features; until then they fail with a message naming them.
"""

import pytest

from megatron.config import ConfigError, parse_config

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
        "--micro-batch-size", "1", "--lr", "1e-3", "--train-iters", "10"]
FAULT_FLAGS = {"--distributed-timeout-minutes", "--exit-signal-handler", "--kill-switch-file"}

MEGATRON_LM_FLAGS = (
    "--accumulate-allreduce-grads-in-fp32", "--adam-beta1", "--adam-beta2", "--adam-eps", "--adlr-autoresume",
    "--adlr-autoresume-interval", "--allow-ambiguous-pad-tokens", "--app-tag-run-name", "--app-tag-run-version",
    "--apply-wd-to-qk-layernorm", "--attention-softmax-in-fp32", "--batch-size", "--bert-embedder-type",
    "--bert-load", "--bert-no-binary-head", "--biencoder-projection-dim", "--biencoder-shared-query-context-model",
    "--block-data-path", "--cache-mla-latents", "--calc-ft-timeouts", "--check-for-large-grads",
    "--checkpoint-activations", "--ckpt-drop-redundant-extra-state", "--ckpt-fully-parallel-save",
    "--classes-fraction", "--clip-grad", "--cp-comm-type", "--create-all-gather-group", "--cuda-graph-modules",
    "--cuda-graph-scope", "--data-args-path", "--data-cache-path", "--data-parallel-sharding-strategy",
    "--data-path", "--data-per-class-fraction", "--dataloader-defer-npy-index-mmap", "--dataloader-fast-cache-load",
    "--dataloader-inter-document-masking", "--dataloader-type", "--ddp-average-in-collective", "--ddp-bucket-size",
    "--ddp-num-buckets", "--ddp-pad-buckets-for-high-nccl-busbw",
    "--ddp-param-name-patterns-for-fp32-local-accumulation", "--ddp-reduce-scatter-with-fp32-accumulation",
    "--decode-only-cuda-graphs", "--decoder-first-pipeline-num-layers", "--decoder-last-pipeline-num-layers",
    "--decoder-num-layers", "--decoder-seq-length", "--decoupled-lr", "--decoupled-min-lr", "--dino-bottleneck-size",
    "--dino-freeze-last-layer", "--dino-head-hidden-size", "--dino-local-crops-number", "--dino-local-img-size",
    "--dino-norm-last-layer", "--dino-teacher-temp", "--dino-warmup-teacher-temp",
    "--dino-warmup-teacher-temp-epochs", "--disable-msc", "--disable-symmetric-registration", "--dist-ckpt-format",
    "--dist-ckpt-workers", "--dump-param-to-param-group-map", "--embedding-path", "--enable-chunked-prefill",
    "--enable-experimental", "--enable-ft-package", "--enable-full-sharding-in-hsdp", "--enable-msc",
    "--encoder-num-layers", "--encoder-seq-length", "--eod-mask-loss", "--evidence-data-path", "--exp-avg-dtype",
    "--exp-avg-sq-dtype", "--fake-process-group", "--fim-data", "--fim-eod-token", "--fim-fragment-rate",
    "--fim-middle-token", "--fim-no-prefix", "--fim-pad-token", "--fim-prefix-token", "--fim-rate",
    "--fim-split-sample", "--fim-spm-rate", "--fim-suffix-token", "--fp16-lm-cross-entropy", "--fp4-param-gather",
    "--fp8-param-gather", "--freeze-all-layers", "--fsdp-double-buffer", "--fsdp-manual-registration",
    "--ft-num-warmup-iters", "--grad-reduce-in-bf16", "--group-query-attention", "--grpo-clamp-eps-lower",
    "--grpo-clamp-eps-upper", "--grpo-entropy-term-weight", "--grpo-filter-groups-with-same-reward",
    "--grpo-group-size", "--grpo-iterations", "--grpo-kl-beta", "--grpo-prompts-per-step",
    "--gtp-expert-remat-nccl-ub", "--gtp-remat-nccl-ub", "--gtp-remat-reduce-scatter-with-fp32-accumulation",
    "--head-lr-mult", "--heterogeneous-layers-config-encoded-json", "--heterogeneous-layers-config-path",
    "--hybrid-layer-pattern", "--hybrid-override-pattern", "--hysteresis", "--ict-head-size", "--ict-load",
    "--img-h", "--img-w", "--indexer-batch-size", "--indexer-log-interval",
    "--inference-batch-times-seqlen-threshold", "--inference-cuda-graph-all-prefills",
    "--inference-cuda-graph-max-tokens", "--inference-disable-ep-consensus", "--inference-dynamic-batching",
    "--inference-dynamic-batching-async-sched-mode", "--inference-dynamic-batching-block-size",
    "--inference-dynamic-batching-buffer-size-gb", "--inference-dynamic-batching-cuda-graph-mixed-prefill-count",
    "--inference-dynamic-batching-cuda-graph-sizing-distribution", "--inference-dynamic-batching-logprobs-mode",
    "--inference-dynamic-batching-mamba-memory-ratio", "--inference-dynamic-batching-max-requests",
    "--inference-dynamic-batching-max-tokens", "--inference-dynamic-batching-num-cuda-graphs",
    "--inference-dynamic-batching-paused-buffer-size-gb", "--inference-dynamic-batching-prefix-caching",
    "--inference-dynamic-batching-prefix-caching-coordinator-policy",
    "--inference-dynamic-batching-prefix-caching-eviction-policy",
    "--inference-dynamic-batching-prefix-caching-mamba-gb",
    "--inference-dynamic-batching-prefix-caching-routing-alpha", "--inference-dynamic-batching-sampling-backend",
    "--inference-dynamic-batching-track-generated-token-events",
    "--inference-dynamic-batching-track-paused-request-events", "--inference-dynamic-batching-unified-memory-level",
    "--inference-logging-step-interval", "--inference-max-requests", "--inference-max-seq-length",
    "--inference-shards", "--inference-text-gen-server-logging", "--inference-use-synchronous-zmq-collectives",
    "--inference-wandb-logging", "--init-method-xavier-uniform", "--initial-loss-scale",
    "--inprocess-active-world-size", "--inprocess-barrier-timeout", "--inprocess-completion-timeout",
    "--inprocess-empty-cuda-cache", "--inprocess-granularity", "--inprocess-hard-timeout",
    "--inprocess-heartbeat-interval", "--inprocess-heartbeat-timeout", "--inprocess-last-call-wait",
    "--inprocess-max-iterations", "--inprocess-monitor-process-interval", "--inprocess-monitor-thread-interval",
    "--inprocess-progress-watchdog-interval", "--inprocess-restart", "--inprocess-soft-timeout",
    "--inprocess-termination-grace-time", "--iter-per-epoch", "--keep-fp8-transpose-cache", "--kitchen-config-file",
    "--kitchen-recipe-number", "--kv-lora-rank", "--langrl-env-config", "--linear-attention-freq", "--lion-beta1",
    "--lion-beta2", "--logits-load-decode-threads", "--logits-load-dir", "--logits-load-ignore-errors",
    "--logits-load-kd-loss-alpha", "--logits-load-msc-prefetch-depth", "--logits-load-prefetch-factor",
    "--logits-save-dir", "--logits-save-dtype", "--logits-save-top-k", "--logits-save-top-p",
    "--logits-save-top-p-min-k", "--loss-scale", "--loss-scale-window", "--lr", "--main-grads-dtype",
    "--main-params-dtype", "--make-vocab-size-divisible-by", "--mamba-inference-conv-states-dtype",
    "--mamba-inference-ssm-states-dtype", "--mamba-training-ssm-states-dtype", "--mask-factor", "--mask-prob",
    "--mask-type", "--max-position-embeddings", "--max-tokens-to-oom",
    "--megatron-fsdp-enable-fine-grained-param-gather", "--megatron-fsdp-main-grads-dtype",
    "--megatron-fsdp-main-params-dtype", "--megatron-fsdp-version", "--mid-level-dataset-surplus",
    "--min-loss-scale", "--min-lr", "--mla-down-proj-fusion", "--mock-data", "--model-parallel-size",
    "--moe-aux-loss-coeff", "--moe-layer-freq", "--moe-router-load-balancing-type", "--moe-upcycling-granularity",
    "--moe-use-upcycling", "--mscale", "--mscale-all-dim", "--muon-coefficient-type", "--muon-extra-scale-factor",
    "--muon-fp32-matmul-prec", "--muon-momentum", "--muon-nesterov", "--muon-no-split-qkv", "--muon-num-ns-steps",
    "--muon-scalar-optimizer", "--muon-scale-mode", "--muon-tp-mode", "--muon-use-syrk", "--no-align-param-gather",
    "--no-bias-dropout-fusion", "--no-bias-gelu-fusion", "--no-bias-swiglu-fusion",
    "--no-check-for-nan-in-loss-and-grad", "--no-create-attention-mask-in-dataloader", "--no-data-sharding",
    "--no-gradient-accumulation-fusion", "--no-gradient-reduce-div-fusion", "--no-load-optim", "--no-load-rng",
    "--no-masked-softmax-fusion", "--no-mmap-bin-files", "--no-one-logger", "--no-overlap-p2p-communication",
    "--no-persist-layer-norm", "--no-pin-cpu-grads", "--no-pin-cpu-params", "--no-position-embedding",
    "--no-rope-freq", "--no-rope-fusion", "--no-save-optim", "--no-save-rng", "--no-use-layer-wise-param-layout",
    "--no-weight-decay-cond-type", "--no-yarn-correction-range-round-to-int", "--num-channels", "--num-classes",
    "--num-dataset-builder-threads", "--num-distributed-optimizer-instances", "--num-experts",
    "--num-layers-per-virtual-pipeline-stage", "--num-speculative-tokens", "--num-virtual-stages-per-pipeline-rank",
    "--num-workers", "--object-storage-cache-path", "--one-logger-async", "--one-logger-project",
    "--one-logger-run-name", "--onnx-safe", "--openai-gelu", "--optimizer", "--optimizer-cpu-offload",
    "--optimizer-cuda-graph", "--optimizer-offload-fraction", "--otel-enabled", "--otel-service-name",
    "--otel-span-groups", "--outer-dp-sharding-strategy", "--output-bert-embeddings", "--output-logit-dtype",
    "--overlap-cpu-optimizer-d2h-h2d", "--overlap-grad-reduce", "--overlap-param-gather",
    "--overlap-param-gather-with-optimizer-step", "--override-ckpt-iteration", "--patch-dim",
    "--per-dataset-sequences-path", "--per-split-data-args-path", "--perform-rl-step",
    "--phase-transition-iterations", "--pipeline-model-parallel-layout", "--position-embedding-type",
    "--q-lora-rank", "--qk-head-dim", "--qk-pos-emb-head-dim", "--query-in-block-prob", "--quick-geglu",
    "--recompute-activations", "--refit-method", "--relative-attention-max-distance",
    "--relative-attention-num-buckets", "--reset-attention-mask", "--reset-position-ids",
    "--result-rejected-tracker-filename", "--retriever-report-topk-accuracies", "--retriever-score-scaling",
    "--reuse-grad-buf-for-mxfp8-param-ag", "--rl-consumption-granularity", "--rl-default-temperature",
    "--rl-default-top-k", "--rl-default-top-p", "--rl-durable-rollout-bank", "--rl-generation-lag",
    "--rl-importance-sampling-truncation-coef", "--rl-inference-expert-model-parallel-size",
    "--rl-inference-expert-tensor-model-parallel-size", "--rl-inference-logprobs-is-correction",
    "--rl-inference-model-unified-memory-level", "--rl-inference-parsers",
    "--rl-inference-pipeline-model-parallel-size", "--rl-inference-tensor-model-parallel-size",
    "--rl-kv-cache-management-mode", "--rl-max-inflight-requests", "--rl-offload-inference-model-weights-when-idle",
    "--rl-offload-optimizer-during-inference", "--rl-partial-rollouts", "--rl-persist-cuda-graphs", "--rl-profile",
    "--rl-profile-dir", "--rl-prompts-per-eval", "--rl-rollout-bank-dir", "--rl-rollout-bank-max-bytes",
    "--rl-sequence-packing-algo", "--rl-sequence-packing-max-sequences-per-bin", "--rl-skip-bos-token",
    "--rl-submission-granularity", "--rl-training-cuda-graphs", "--rl-use-sequence-packing",
    "--rl-verify-model-weights-swap", "--rope-scaling-factor", "--rope-type", "--rotary-base", "--rotary-percent",
    "--rotary-scaling-factor", "--rotary-seq-len-interpolation-factor", "--run-workload-inspector-server",
    "--sample-rate", "--seq-length", "--sft", "--sft-tokenizer-prompt-format", "--sgd-momentum", "--short-seq-prob",
    "--spec", "--split", "--squared-relu", "--suggested-communication-unit-size", "--swiglu", "--swin-backbone-type",
    "--te-precision-config-file", "--test-data-path", "--titles-data-path", "--torch-fsdp2-no-reshard-after-forward",
    "--tp-comm-overlap-cfg", "--train-data-path", "--untie-embeddings-and-output-weights", "--use-dist-ckpt",
    "--use-distributed-optimizer", "--use-flash-attn", "--use-legacy-static-engine", "--use-mcore-models",
    "--use-nccl-ub", "--use-one-sent-docs", "--use-precision-aware-optimizer", "--use-rope-scaling",
    "--use-rotary-position-embeddings", "--use-same-sampling-seed-across-dp-ranks",
    "--use-torch-optimizer-for-cpu-offload", "--v-head-dim", "--valid-data-path", "--vision-backbone-type",
    "--vision-pretraining", "--vision-pretraining-type", "--warmup", "--weight-decay", "--window-attn-skip-freq",
    "--window-size", "--yaml-cfg", "--yarn-beta-fast", "--yarn-beta-slow", "--yarn-correction-range-round-to-int",
    "--yarn-original-max-position-embeddings",
)


def _owned_elsewhere(flag):
    return (flag.startswith("--moe-") or "expert" in flag or "context-parallel" in flag or flag.startswith("--cp-")
            or flag == "--num-experts" or flag in FAULT_FLAGS)


@pytest.mark.parametrize("flag", MEGATRON_LM_FLAGS)
def test_megatron_lm_flag_is_never_unknown(flag):
    try:
        config = parse_config(BASE + [flag], world_size=1)
    except ConfigError as error:
        message = str(error)
        if _owned_elsewhere(flag):
            assert flag in message, message
        else:
            assert "unknown flag" not in message and "unrecognized" not in message, message
        return
    assert config is not None
