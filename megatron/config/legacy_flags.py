"""Megatron-DeepSpeed and Megatron-LM flags that have no dataclass field here, and what each one does.

Their GPT pre-training scripts should run unchanged after swapping the entry script, so every flag of
those argument sets gets one of three dispositions, decided before argparse sees the command line:

- ``noop``:    it only tuned a CUDA kernel or a GPU-only feature this design does not have; accepted, and
               start-up logs once "flag X has no effect here because ...";
- ``rewrite``: an older spelling of something that exists; replaced by the current flag(s), and logged;
- ``refuse``:  it changes what is trained and there is nothing equivalent; a ConfigError names what to use.

Flags that do have a field (``--train-samples``, ``--optimizer``, ...) are generated from the dataclasses
like every other flag; this table only holds the rest. Flags owned by MoE / context parallelism / fault
handling are added by those features and are deliberately not listed here.
"""

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from megatron.config.errors import ConfigError

SWITCH, VALUE, MANY = 0, 1, "*"


@dataclass(frozen=True)
class LegacyFlag:
    takes: object                  # SWITCH, VALUE or MANY (values up to the next flag)
    kind: str                      # "noop", "rewrite" or "refuse"
    text: str                      # why it has no effect / what replaces it
    # rewrite: values -> the flags to use instead. noop with a check: values -> error text or None.
    rewrite: Optional[Callable[[List[str]], List[str]]] = None
    check: Optional[Callable[[List[str]], Optional[str]]] = None


def _noop(text: str, takes=SWITCH, check=None) -> LegacyFlag:
    return LegacyFlag(takes, "noop", text, check=check)


def _refuse(text: str, takes=SWITCH) -> LegacyFlag:
    return LegacyFlag(takes, "refuse", text)


def _to(*flags: str, takes=VALUE, text: str = "") -> LegacyFlag:
    """Rename: the values move to the first flag; further flags are switches added as well."""
    first, *extra = flags
    return LegacyFlag(takes, "rewrite", text or f"older spelling of {first}",
                      rewrite=lambda values: [first, *values, *extra])


def _only(allowed: Sequence[str], why: str) -> Callable[[List[str]], Optional[str]]:
    def check(values: List[str]) -> Optional[str]:
        if [v.lower() for v in values] not in [[a.lower()] for a in allowed]:
            return f"only {' or '.join(allowed)} is possible here: {why}"
        return None
    return check


_FUSION = "the operation is not a fused CUDA kernel here (plain PyTorch ops; torch picks its own kernels)"
_SDPA = ("attention is torch's scaled_dot_product_attention, which chooses a flash / memory-efficient kernel by "
         "itself wherever the device has one")
_GPU_COMM = "DeepSpeed's engine does the tensor-parallel and data-parallel communication; there is no such option"
_TIMERS = "per-phase timers are not collected here; iteration time, tokens/s and MFU are logged every --log-interval"
_NOT_GPT = "it belongs to a non-GPT model or task of Megatron (BERT, T5, retrieval, vision, distillation); this " \
           "project pre-trains GPT/Llama models only"

LEGACY_FLAGS: Dict[str, LegacyFlag] = {
    # --- kernel fusions and GPU-only switches: no effect --------------------------------------------
    "--no-masked-softmax-fusion": _noop(_FUSION),
    "--no-bias-gelu-fusion": _noop(_FUSION),
    "--no-bias-dropout-fusion": _noop(_FUSION),
    "--no-bias-swiglu-fusion": _noop(_FUSION),
    "--no-rope-fusion": _noop(_FUSION),
    "--no-persist-layer-norm": _noop(_FUSION),
    "--disable-mem-efficient-ln": _noop(_FUSION),
    "--no-gradient-accumulation-fusion": _noop(_FUSION),
    "--cross-entropy-loss-fusion": _noop(_FUSION),
    "--apply-rope-fusion": _noop(_FUSION),
    "--attention-softmax-in-fp32": _noop("scaled_dot_product_attention accumulates its softmax in fp32 already"),
    "--no-query-key-layer-scaling": _noop("query-key layer scaling guarded the fp16 fused softmax kernel against "
                                          "overflow; attention here scales by 1/sqrt(head dim) once"),
    "--apply-query-key-layer-scaling": _noop("query-key layer scaling guarded the fp16 fused softmax kernel "
                                             "against overflow; attention here scales by 1/sqrt(head dim) once"),
    "--use-flash-attn": _noop(_SDPA),
    "--use-flash-attn-v1": _noop(_SDPA),
    "--use-flash-attn-v2": _noop(_SDPA),
    "--use-flash-attn-triton": _noop(_SDPA),
    "--use-flash-attn-builder": _noop(_SDPA),
    "--attention-backend": _noop(_SDPA, VALUE),
    "--no-async-tensor-model-parallel-allreduce": _noop(_GPU_COMM),
    "--async-tensor-model-parallel-allreduce": _noop(_GPU_COMM),
    "--no-scatter-gather-tensors-in-pipeline": _noop(_GPU_COMM),
    "--overlap-p2p-communication": _noop(_GPU_COMM),
    "--use-ring-exchange-p2p": _noop(_GPU_COMM),
    "--tp-comm-overlap": _noop(_GPU_COMM),
    "--overlap-grad-reduce": _noop(_GPU_COMM),
    "--overlap-param-gather": _noop(_GPU_COMM),
    "--DDP-impl": _noop("data parallelism is DeepSpeed's engine, not Megatron's DDP", VALUE),
    "--no-contiguous-buffers-in-local-ddp": _noop("data parallelism is DeepSpeed's engine, not Megatron's DDP"),
    "--accumulate-allreduce-grads-in-fp32": _noop("DeepSpeed keeps gradient accumulation in its optimizer's "
                                                  "dtype; set data_types.grad_accum_dtype in the JSON to choose"),
    "--use-distributed-optimizer": _noop("optimizer-state sharding is DeepSpeed ZeRO here: "
                                         "zero_optimization.stage >= 1 in the JSON (or --zero-stage 1)"),
    "--empty-unused-memory-level": _noop("it emptied the CUDA caching allocator; memory is managed by torch "
                                         "and DeepSpeed here", VALUE),
    "--use-cpu-initialization": _noop("initial values depend only on the seed and each parameter's name and "
                                      "full shape, never on the device that draws them"),
    "--use-pin-memory": _noop("it pinned host memory for GPU copies; the data loader decides pinning itself"),
    "--data-impl": _noop("datasets are always Megatron's memory-mapped .bin/.idx files", VALUE,
                         check=_only(["mmap"], "datasets are Megatron's memory-mapped .bin/.idx files; convert "
                                     "other formats with tools/preprocess_data.py")),
    "--mmap-bin-files": _noop("dataset .bin files are always memory-mapped"),
    "--no-mmap-bin-files": _refuse("dataset .bin files are always memory-mapped"),
    "--mmap-warmup": _noop("dataset files are memory-mapped lazily; there is nothing to warm up"),
    "--onnx-safe": _noop("ONNX export is not part of pre-training", VALUE),
    "--ds_fused_adam": _noop("the built AdamW is already the fused implementation (torch's fused AdamW, or "
                             "DeepSpeedCPUAdam with optimizer offload)"),
    "--cpu_torch_adam": _noop("the optimizer is AdamW from torch (or DeepSpeedCPUAdam with --offload-optimizer cpu)"),
    "--transformer-impl": _noop("the layers are this project's own (--use-transformer-engine selects NVIDIA "
                                "Transformer Engine on GPUs)", VALUE, check=_only(["local"], "use "
                                "--use-transformer-engine for Transformer Engine")),
    "--use-mcore-models": _noop("there is one model implementation here"),
    "--use-legacy-models": _noop("there is one model implementation here"),
    "--fp16-lm-cross-entropy": _noop("the vocabulary-parallel cross entropy always computes in fp32 here"),
    "--max-tokens-to-oom": _noop("a text-generation server setting; pre-training does not use it", VALUE),
    "--inference-batch-times-seqlen-threshold": _noop("a text-generation setting; pre-training does not use it",
                                                      VALUE),
    "--manual-gc": _noop("Python's garbage collector is left to itself; no CUDA graphs to protect"),
    "--manual-gc-interval": _noop("Python's garbage collector is left to itself", VALUE),
    "--trust-remote-code": _noop("tokenizers are read from local files only; no remote code is ever run"),
    "--num-dataset-builder-threads": _noop("sample indices are built by rank 0 and cached", VALUE),
    "--no-create-attention-mask-in-dataloader": _noop("the causal mask is applied inside attention; batches "
                                                      "carry a mask only with --reset-attention-mask"),
    "--zero-reduce-scatter": _noop("ZeRO options come from the DeepSpeed JSON: set "
                                   "zero_optimization.reduce_scatter there"),
    "--zero-contigious-gradients": _noop("ZeRO options come from the DeepSpeed JSON: set "
                                         "zero_optimization.contiguous_gradients there"),
    # --- logging extras ------------------------------------------------------------------------------
    "--log-timers-to-tensorboard": _noop(_TIMERS),
    "--timing-log-level": _noop(_TIMERS, VALUE),
    "--timing-log-option": _noop(_TIMERS, VALUE),
    "--no-barrier-with-level-1-timing": _noop(_TIMERS),
    "--log-throughput": _noop("throughput (tokens/s, TFLOP/s, MFU) is always logged"),
    "--log-progress": _noop("progress is logged every --log-interval and in the metrics file"),
    "--log-params-norm": _noop("the parameter norm is not computed here (grad norm, lr, loss and loss scale are)"),
    "--log-num-zeros-in-grad": _noop("zeros in the gradient are not counted here"),
    "--log-optimizer-states-to-tensorboard": _noop("optimizer-state norms are not written to TensorBoard here"),
    # --- older spellings --------------------------------------------------------------------------------
    "--model-parallel-size": _to("--tensor-model-parallel-size"),
    "--batch-size": _to("--micro-batch-size"),
    "--warmup": _to("--lr-warmup-fraction"),
    "--encoder-seq-length": _to("--seq-length"),
    "--encoder-num-layers": _to("--num-layers"),
    "--rotary-position-embeddings-theta": _to("--rotary-base"),
    "--recompute-activations": LegacyFlag(SWITCH, "rewrite", "Megatron's switch for selective recomputation",
                                          rewrite=lambda values: ["--recompute-granularity", "selective"]),
    "--distribute-saved-activations": _to("--partition-activations", takes=SWITCH),
    "--distribute-checkpointed-activations": _to("--partition-activations", takes=SWITCH),
    # --- settings that change training and have no equivalent -----------------------------------------
    "--fp32-residual-connection": _refuse("the residual stream keeps the compute dtype; train without "
                                          "--bf16/--fp16 for an fp32 model"),
    "--embedding-weights-in-fp32": _refuse("the embedding lookup keeps the parameters' dtype; train without "
                                           "--bf16/--fp16 for fp32 embeddings"),
    "--apply-layernorm-1p": _refuse("only plain LayerNorm / RMSNorm exist (--normalization)"),
    "--apply-residual-connection-post-layernorm": _refuse("only the pre-norm residual exists here"),
    "--openai-gelu": _refuse("the MLP uses torch's GeLU (or --swiglu)"),
    "--squared-relu": _refuse("the MLP uses GeLU or --swiglu"),
    "--no-position-embedding": _refuse("use --position-embedding-type rope (or learned_absolute)"),
    "--init-method-xavier-uniform": _refuse("initialization is normal with --init-method-std"),
    "--qk-layernorm": _refuse("query/key normalization is not implemented"),
    "--multi-latent-attention": _refuse("multi-latent attention is not implemented"),
    "--fp8-format": _refuse("fp8 training needs Transformer Engine on Hopper GPUs; use --bf16", VALUE),
    "--fp8-e4m3": _refuse("fp8 training needs Transformer Engine on Hopper GPUs; use --bf16"),
    "--fp8-hybrid": _refuse("fp8 training needs Transformer Engine on Hopper GPUs; use --bf16"),
    "--no-fp8-wgrad": _refuse("fp8 training needs Transformer Engine on Hopper GPUs; use --bf16"),
    "--fp8-margin": _refuse("fp8 training needs Transformer Engine on Hopper GPUs; use --bf16", VALUE),
    "--fp8-interval": _refuse("fp8 training needs Transformer Engine on Hopper GPUs; use --bf16", VALUE),
    "--fp8-amax-history-len": _refuse("fp8 training needs Transformer Engine on Hopper GPUs; use --bf16", VALUE),
    "--fp8-amax-compute-algo": _refuse("fp8 training needs Transformer Engine on Hopper GPUs; use --bf16", VALUE),
    "--cpu-optimizer": _refuse("use --offload-optimizer cpu (ZeRO >= 1), which runs DeepSpeedCPUAdam"),
    "--remote-device": _refuse("use --offload-param cpu (ZeRO-3) to keep parameters in CPU memory", VALUE),
    "--standalone-embedding-stage": _refuse("the embedding lives in the first pipeline stage"),
    "--pipeline-model-parallel-split-rank": _refuse("encoder-decoder pipelines are not built here", VALUE),
    "--enable-zbh1-pipeline": _refuse("the zero-bubble schedule is not implemented; use --pipeline-schedule "
                                      "1f1b or interleaved"),
    "--enable-zbh1-exact-semantics": _refuse("the zero-bubble schedule is not implemented; use "
                                             "--pipeline-schedule 1f1b or interleaved"),
    "--lazy-mpu-init": _refuse("process groups are always created at start-up", VALUE),
    "--data-parallel-random-init": _refuse("data-parallel replicas always start identical"),
    "--use-dataset-only": _refuse("data-only runs are not supported by the training entry script", VALUE),
    "--ds-inference": _refuse("inference is not part of pre-training here; use tools/generate_text.py or "
                              "tools/run_text_generation_server.py"),
    "--inference": _refuse("inference is not part of pre-training here; use tools/generate_text.py or "
                           "tools/run_text_generation_server.py"),
    "--data-efficiency-curriculum-learning": _refuse("DeepSpeed data efficiency (curriculum learning) is not "
                                                     "supported; drop it and the JSON's data_efficiency block"),
    "--random-ltd": _refuse("DeepSpeed random-LTD is not supported"),
    "--train-data-exact-num-epochs": _refuse("data-efficiency sampling is not supported", VALUE),
    "--return-data-index": _refuse("data-efficiency sampling is not supported"),
    "--train-idx-path": _refuse("sample indices are built and cached here (--data-cache-path)", VALUE),
    "--train-desc-path": _refuse("sample indices are built and cached here (--data-cache-path)", VALUE),
    "--train-doc-idx-path": _refuse("sample indices are built and cached here (--data-cache-path)", VALUE),
    "--train-sample-idx-path": _refuse("sample indices are built and cached here (--data-cache-path)", VALUE),
    "--train-shuffle-idx-path": _refuse("sample indices are built and cached here (--data-cache-path)", VALUE),
    "--repeated-dataloader": _refuse("the sampler continues by consumed samples; size the run with "
                                     "--train-samples instead"),
    "--adlr-autoresume": _refuse("SIGTERM / SIGINT save a checkpoint and stop; resume with --load"),
    "--adlr-autoresume-interval": _refuse("SIGTERM / SIGINT save a checkpoint and stop; resume with --load", VALUE),
    "--aml-data-download-path": _refuse("give local files with --data-path", VALUE),
    "--wandb-project": _refuse("Weights & Biases is not built in; use --tensorboard-dir (and "
                               "--tensorboard-tags megatron-deepspeed) or the metrics file", VALUE),
    "--wandb-exp-name": _refuse("Weights & Biases is not built in; use --tensorboard-dir", VALUE),
    "--wandb-save-dir": _refuse("Weights & Biases is not built in; use --tensorboard-dir", VALUE),
    "--load-tag": _refuse("point <load>/latest at the checkpoint folder you want", VALUE),
    "--no-load-lr-state": _refuse("use --override-opt_param-scheduler (schedule from the flags) or --finetune"),
    "--no-initialization": _refuse("parameters are always initialized before a load"),
    "--reset-iteration": _refuse("use --finetune (weights only, iteration count from 0)"),
    "--no-save-optim": _refuse("checkpoints always hold the optimizer state (an exact resume needs it); use "
                               "tools/checkpoint/export_weights.py for a weights-only copy"),
    "--no-save-rng": _refuse("checkpoints always hold the random state (an exact resume needs it)"),
    "--start-weight-decay": _refuse("weight-decay schedules are not implemented; use --weight-decay", VALUE),
    "--end-weight-decay": _refuse("weight-decay schedules are not implemented; use --weight-decay", VALUE),
    "--weight-decay-incr-style": _noop("weight decay is constant (--weight-decay)", VALUE,
                                       check=_only(["constant"], "weight decay is constant (--weight-decay)")),
    "--dataloader-type": _noop("the sampler is Megatron's 'single' pre-training sampler", VALUE,
                               check=_only(["single"], "the sampler is Megatron's 'single' pre-training sampler")),
    "--vocab-extra-ids": _noop("no extra sentinel ids are added (T5 only)", VALUE,
                               check=_only(["0"], "extra sentinel ids are a T5 feature")),
    "--rotary-percent": _noop("RoPE rotates the whole head dimension", VALUE,
                              check=_only(["1.0", "1"], "partial rotary embeddings are not implemented")),
    "--checkpoint-num-layers": _noop("full recomputation checkpoints one layer at a time", VALUE,
                                     check=_only(["1"], "full recomputation checkpoints one layer at a time")),
    "--recompute-num-layers": _noop("full recomputation checkpoints one layer at a time", VALUE,
                                    check=_only(["1"], "full recomputation checkpoints one layer at a time")),
    "--recompute-method": _noop("full recomputation checkpoints one layer at a time (Megatron's uniform with "
                                "--recompute-num-layers 1)", VALUE,
                                check=_only(["uniform"], "full recomputation checkpoints every layer")),
    "--sample-rate": _noop("every document of --data-path is used", VALUE,
                           check=_only(["1.0", "1"], "dataset subsampling is not implemented; blend with weights")),
    "--use-tutel": _refuse("Tutel MoE kernels are not used; MoE layers are megatron/model/moe (a loop over local experts)"),
    "--head-lr-mult": _refuse(_NOT_GPT, VALUE),
    "--decoder-num-layers": _refuse(_NOT_GPT, VALUE),
    "--decoder-seq-length": _refuse(_NOT_GPT, VALUE),
    "--mask-prob": _refuse(_NOT_GPT, VALUE),
    "--short-seq-prob": _refuse(_NOT_GPT, VALUE),
    "--mock-data": _refuse("leave out --data-path to train on the built-in corpus"),
    "--ckpt-format": _noop("checkpoints are DeepSpeed's folders with a manifest", VALUE,
                           check=_only(["torch"], "Megatron-LM's distributed checkpoint format is not written "
                                       "here; checkpoints are DeepSpeed folders")),
    "--use-dist-ckpt": _refuse("checkpoints are DeepSpeed folders; --universal-checkpoint reshards them"),
    "--async-save": _refuse("saves are synchronous here (written atomically, then published)"),
    "--use-torch-fsdp2": _refuse("sharding is DeepSpeed ZeRO here (zero_optimization.stage 3)"),
    "--calculate-per-token-loss": _refuse("the loss is the mean over each micro-batch's kept tokens"),
}

# Flags of Megatron's non-GPT models and tasks; all refused with the same message.
_NON_GPT_FLAGS = {
    SWITCH: ("--output-bert-embeddings", "--bert-no-binary-head", "--retro-add-retriever",
             "--biencoder-shared-query-context-model", "--use-one-sent-docs", "--retriever-score-scaling",
             "--no-data-sharding", "--vision-pretraining", "--dino-norm-last-layer", "--mos", "--kd"),
    VALUE: ("--bert-embedder-type", "--retro-workdir", "--retro-cyclic-train-iters", "--retro-encoder-layers",
            "--retro-encoder-hidden-dropout", "--retro-encoder-attention-dropout", "--ict-head-size",
            "--biencoder-projection-dim", "--ict-load", "--bert-load", "--titles-data-path",
            "--query-in-block-prob", "--evidence-data-path", "--block-data-path", "--embedding-path",
            "--indexer-batch-size", "--indexer-log-interval", "--num-classes", "--img-h", "--img-w",
            "--num-channels", "--patch-dim", "--classes-fraction", "--data-per-class-fraction",
            "--vision-pretraining-type", "--vision-backbone-type", "--swin-backbone-type", "--mask-type",
            "--mask-factor", "--iter-per-epoch", "--dino-local-img-size", "--dino-local-crops-number",
            "--dino-head-hidden-size", "--dino-bottleneck-size", "--dino-freeze-last-layer",
            "--dino-warmup-teacher-temp", "--dino-teacher-temp", "--dino-warmup-teacher-temp-epochs",
            "--retriever-seq-length", "--num-layers-teacher", "--hidden-size-teacher",
            "--num-attention-heads-teacher", "--kd-alpha-ce", "--kd-beta-ce", "--kd-temp", "--load-teacher"),
    MANY: ("--retriever-report-topk-accuracies", "--num-experts-teacher"),
}
for _takes, _flags in _NON_GPT_FLAGS.items():
    for _flag in _flags:
        LEGACY_FLAGS.setdefault(_flag, _refuse(_NOT_GPT, _takes))

# Megatron-LM feature families this project does not have, by flag prefix (Megatron-LM's current
# megatron/training/arguments.py). Flags owned by MoE, context parallelism or fault handling never match here.
_LM_GPU = "a CUDA / NCCL / Transformer Engine performance option; communication and kernels are DeepSpeed's and " \
          "torch's here"
LEGACY_PREFIXES: Tuple[Tuple[str, str, str], ...] = (
    ("--inference-", "noop", "a text-generation (inference server) setting; pre-training does not use it"),
    ("--rl-", "refuse", "reinforcement-learning post-training is not part of this project"),
    ("--grpo-", "refuse", "reinforcement-learning post-training is not part of this project"),
    ("--langrl-", "refuse", "reinforcement-learning post-training is not part of this project"),
    ("--perform-rl-step", "refuse", "reinforcement-learning post-training is not part of this project"),
    ("--sft", "refuse", "supervised fine-tuning datasets are not built here; pre-train, then --finetune"),
    ("--inprocess-", "refuse", "in-process restart is not built in; SIGTERM saves and --load resumes"),
    ("--ft-", "refuse", "NVIDIA's fault-tolerance package is not used; SIGTERM saves and --load resumes"),
    ("--enable-ft-package", "refuse", "NVIDIA's fault-tolerance package is not used"),
    ("--calc-ft-timeouts", "refuse", "NVIDIA's fault-tolerance package is not used"),
    ("--logits-", "refuse", "logit saving / distillation is not part of pre-training here"),
    ("--muon-", "refuse", "the Muon optimizer is not available; use --optimizer adam or a DeepSpeed JSON optimizer"),
    ("--lion-", "refuse", "the Lion optimizer is not available; use --optimizer adam or a DeepSpeed JSON optimizer"),
    ("--fim-", "refuse", "fill-in-the-middle data is not built here"),
    ("--yarn-", "refuse", "YaRN RoPE scaling is not implemented; use --rotary-base"),
    ("--no-yarn-", "refuse", "YaRN RoPE scaling is not implemented; use --rotary-base"),
    ("--rope-scaling", "refuse", "RoPE scaling is not implemented; use --rotary-base"),
    ("--use-rope-scaling", "refuse", "RoPE scaling is not implemented; use --rotary-base"),
    ("--rotary-scaling-factor", "refuse", "RoPE scaling is not implemented; use --rotary-base"),
    ("--rotary-seq-len-interpolation-factor", "refuse", "RoPE scaling is not implemented; use --rotary-base"),
    ("--rope-type", "refuse", "RoPE here is the standard (Llama) rotation"),
    ("--no-rope-freq", "refuse", "RoPE here rotates every layer"),
    ("--mscale", "refuse", "RoPE scaling is not implemented"),
    ("--mamba-", "refuse", "Mamba / hybrid models are not implemented; this project trains GPT and Llama"),
    ("--hybrid-", "refuse", "Mamba / hybrid models are not implemented; this project trains GPT and Llama"),
    ("--linear-attention", "refuse", "linear attention is not implemented"),
    ("--heterogeneous-layers", "refuse", "every layer has the same shape here"),
    ("--q-lora-rank", "refuse", "multi-latent attention is not implemented"),
    ("--kv-lora-rank", "refuse", "multi-latent attention is not implemented"),
    ("--qk-head-dim", "refuse", "multi-latent attention is not implemented; use --kv-channels"),
    ("--qk-pos-emb-head-dim", "refuse", "multi-latent attention is not implemented"),
    ("--v-head-dim", "refuse", "multi-latent attention is not implemented; use --kv-channels"),
    ("--cache-mla-latents", "refuse", "multi-latent attention is not implemented"),
    ("--mla-", "refuse", "multi-latent attention is not implemented"),
    ("--window-", "refuse", "sliding-window attention is not implemented"),
    ("--relative-attention-", "refuse", "relative position buckets (T5) are not implemented"),
    ("--megatron-fsdp-", "refuse", "sharding is DeepSpeed ZeRO here (zero_optimization.stage 3)"),
    ("--fsdp-", "refuse", "sharding is DeepSpeed ZeRO here (zero_optimization.stage 3)"),
    ("--torch-fsdp2-", "refuse", "sharding is DeepSpeed ZeRO here (zero_optimization.stage 3)"),
    ("--data-parallel-sharding-strategy", "refuse", "sharding is DeepSpeed ZeRO here (zero_optimization.stage)"),
    ("--outer-dp-sharding-strategy", "refuse", "sharding is DeepSpeed ZeRO here (zero_optimization.stage)"),
    ("--enable-full-sharding-in-hsdp", "refuse", "sharding is DeepSpeed ZeRO here (zero_optimization.stage)"),
    ("--num-distributed-optimizer-instances", "refuse", "optimizer sharding is DeepSpeed ZeRO here"),
    ("--ddp-", "noop", "data parallelism is DeepSpeed's engine, not Megatron's DDP (bucketing is DeepSpeed's "
                       "reduce_bucket_size in the JSON)"),
    ("--cuda-graph", "noop", _LM_GPU),
    ("--decode-only-cuda-graphs", "noop", _LM_GPU),
    ("--optimizer-cuda-graph", "noop", _LM_GPU),
    ("--use-nccl-ub", "noop", _LM_GPU),
    ("--gtp-", "noop", _LM_GPU),
    ("--disable-symmetric-registration", "noop", _LM_GPU),
    ("--tp-comm-overlap-cfg", "noop", _LM_GPU),
    ("--no-gradient-reduce-div-fusion", "noop", _LM_GPU),
    ("--no-align-param-gather", "noop", _LM_GPU),
    ("--overlap-param-gather-with-optimizer-step", "noop", _LM_GPU),
    ("--create-all-gather-group", "noop", _LM_GPU),
    ("--suggested-communication-unit-size", "noop", _LM_GPU),
    ("--keep-fp8-transpose-cache", "noop", _LM_GPU),
    ("--reuse-grad-buf-for-mxfp8-param-ag", "noop", _LM_GPU),
    ("--no-pin-cpu-", "noop", _LM_GPU),
    ("--overlap-cpu-optimizer-d2h-h2d", "noop", _LM_GPU),
    ("--no-overlap-p2p-communication", "noop", _LM_GPU),
    ("--no-use-layer-wise-param-layout", "noop", _LM_GPU),
    ("--mla-down-proj-fusion", "noop", _LM_GPU),
    ("--grad-reduce-in-bf16", "refuse", "gradient reduction dtype is DeepSpeed's: set "
                                        "communication_data_type in the JSON"),
    ("--ddp-reduce-scatter-with-fp32-accumulation", "noop", _LM_GPU),
    ("--fp8-", "refuse", "fp8 training needs Transformer Engine on Hopper GPUs; use --bf16"),
    ("--fp4-", "refuse", "fp4 training needs Transformer Engine on Blackwell GPUs; use --bf16"),
    ("--te-", "refuse", "Transformer Engine recipes are not used (--use-transformer-engine selects its layers)"),
    ("--kitchen-", "refuse", "NVIDIA Kitchen quantization recipes are not used"),
    ("--one-logger", "noop", "NVIDIA's one-logger telemetry is not used; metrics go to the log, the metrics "
                             "file and TensorBoard"),
    ("--no-one-logger", "noop", "NVIDIA's one-logger telemetry is not used"),
    ("--app-tag-", "noop", "NVIDIA's one-logger telemetry is not used"),
    ("--otel-", "noop", "OpenTelemetry tracing is not used"),
    ("--run-workload-inspector-server", "noop", "the workload inspector is not used"),
    ("--enable-msc", "refuse", "multi-storage clients are not used; give local paths"),
    ("--disable-msc", "noop", "multi-storage clients are not used"),
    ("--object-storage-cache-path", "refuse", "object storage is not used; give local paths"),
    ("--dist-ckpt-", "refuse", "checkpoints are DeepSpeed folders; --universal-checkpoint reshards them"),
    ("--ckpt-", "refuse", "checkpoints are DeepSpeed folders with a manifest; these Megatron-LM options do not apply"),
    ("--override-ckpt-iteration", "refuse", "point <load>/latest at the checkpoint you want"),
    ("--exp-avg-", "refuse", "optimizer-state dtypes are DeepSpeed's (fp32 master state)"),
    ("--main-grads-dtype", "refuse", "gradient dtypes are DeepSpeed's: data_types.grad_accum_dtype in the JSON"),
    ("--main-params-dtype", "refuse", "master weights are DeepSpeed's (fp32 under bf16/fp16)"),
    ("--use-precision-aware-optimizer", "refuse", "the optimizer is DeepSpeed's / torch's AdamW"),
    ("--optimizer-cpu-offload", "refuse", "use --offload-optimizer cpu (ZeRO >= 1)"),
    ("--optimizer-offload-fraction", "refuse", "use --offload-optimizer cpu (ZeRO >= 1); offload is all or nothing"),
    ("--use-torch-optimizer-for-cpu-offload", "refuse", "use --offload-optimizer cpu (DeepSpeedCPUAdam)"),
    ("--decoupled-", "refuse", "every parameter follows one LR schedule (--lr / --min-lr)"),
    ("--no-weight-decay-cond-type", "refuse", "weight decay skips biases and norms (Megatron's default rule)"),
    ("--apply-wd-to-qk-layernorm", "refuse", "query/key normalization is not implemented"),
    ("--freeze-all-layers", "refuse", "every parameter trains here"),
    ("--quick-geglu", "refuse", "the MLP uses GeLU or --swiglu"),
    ("--spec", "refuse", "there is one layer implementation (no layer specs)"),
    ("--yaml-cfg", "refuse", "configuration is flags plus the DeepSpeed JSON (docs/configuration.md)"),
    ("--decoder-first-pipeline-num-layers", "refuse", "every pipeline stage holds the same number of layers"),
    ("--decoder-last-pipeline-num-layers", "refuse", "every pipeline stage holds the same number of layers"),
    ("--pipeline-model-parallel-layout", "refuse", "every pipeline stage holds the same number of layers"),
    ("--num-virtual-stages-per-pipeline-rank", "rewrite", "use --num-layers-per-virtual-pipeline-stage"),
    ("--data-args-path", "refuse", "give the blend with --data-path weight prefix ..."),
    ("--per-split-data-args-path", "refuse", "give the splits with --train-data-path / --valid-data-path"),
    ("--per-dataset-sequences-path", "refuse", "sample indices are built and cached here (--data-cache-path)"),
    ("--mid-level-dataset-surplus", "noop", "blending here is exact (no surplus samples are drawn)"),
    ("--dataloader-", "noop", "index files are memory-mapped and cached by rank 0 already"),
    ("--allow-ambiguous-pad-tokens", "noop", "pre-training batches are packed and never padded"),
    ("--check-for-large-grads", "noop", "non-finite losses stop the run; large gradients are clipped (--clip-grad)"),
    ("--no-check-for-nan-in-loss-and-grad", "refuse", "a non-finite loss always stops the run"),
    ("--result-rejected-tracker-filename", "refuse", "result validation is not built in"),
    ("--phase-transition-iterations", "refuse", "a run has one set of flags; resume with --load and new flags"),
    ("--dump-param-to-param-group-map", "noop", "parameter groups are Megatron's two (decay / no decay)"),
    ("--output-logit-dtype", "refuse", "logits keep the compute dtype; the loss is computed in fp32"),
    ("--fake-process-group", "refuse", "ranks are real processes here (use --num_gpus 1 for a single rank)"),
    ("--enable-experimental", "noop", "there are no experimental switches here"),
    ("--refit-method", "refuse", "reinforcement-learning post-training is not part of this project"),
    ("--num-speculative-tokens", "noop", "a text-generation setting; pre-training does not use it"),
    ("--enable-chunked-prefill", "noop", "a text-generation setting; pre-training does not use it"),
    ("--use-legacy-static-engine", "noop", "a text-generation setting; pre-training does not use it"),
    ("--use-same-sampling-seed-across-dp-ranks", "noop", "a text-generation setting; pre-training does not use it"),
)


def _prefix_rule(flag: str) -> Optional[LegacyFlag]:
    """A family rule for a flag with no entry of its own; MANY because the parser has no positional
    arguments: whatever follows the flag up to the next flag is its value(s)."""
    for prefix, kind, text in LEGACY_PREFIXES:
        if flag == prefix or flag.startswith(prefix if prefix.endswith("-") else prefix + "-"):
            if kind == "rewrite":
                return _refuse(text, MANY)
            return LegacyFlag(MANY, kind, text)
    return None


# Megatron-DeepSpeed / Megatron-LM tokenizer names -> the implementation here.
TOKENIZER_NAMES = {
    "GPTSentencePieceTokenizer": "SentencePieceTokenizer",
    "Llama2Tokenizer": "SentencePieceTokenizer",
    "HuggingFaceTokenizer": "HFTokenizer",
}


def _split_assignment(token: str) -> Tuple[str, Optional[str]]:
    if token.startswith("--") and "=" in token:
        flag, value = token.split("=", 1)
        return flag, value
    return token, None


def translate_legacy_flags(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(argv with legacy flags removed or rewritten, the start-up notes). Raises ConfigError for refused flags."""
    result: List[str] = []
    notes: List[str] = []
    tokens = list(argv)
    index = 0
    while index < len(tokens):
        flag, inline = _split_assignment(tokens[index])
        index += 1
        # A flag the generated parser defines always wins: a feature that adds a field for a flag listed here
        # (MoE, context parallelism, ...) must not be shadowed by its legacy entry.
        spec = None
        if flag.startswith("--") and flag not in _own_flags():
            spec = LEGACY_FLAGS.get(flag) or _prefix_rule(flag)
        if spec is None:
            if flag == "--tokenizer-type" and (inline is not None or index < len(tokens)):
                name = inline if inline is not None else tokens[index]
                index += 0 if inline is not None else 1
                if name in TOKENIZER_NAMES:
                    notes.append(f"--tokenizer-type {name} is {TOKENIZER_NAMES[name]} here (the same model file "
                                 f"and ids; end of document is the model's eos)")
                    name = TOKENIZER_NAMES[name]
                result += ["--tokenizer-type", name]
                continue
            result.append(tokens[index - 1])
            continue
        values = _take_values(flag, spec.takes, inline, tokens, index)
        index += len(values) - (1 if inline is not None else 0)
        shown = " ".join([flag, *values])
        if spec.kind == "refuse":
            raise ConfigError(f"{shown} is not supported here: {spec.text}")
        if spec.kind == "rewrite":
            replacement = spec.rewrite(values)
            notes.append(f"{shown} is read as {' '.join(replacement)} ({spec.text})")
            result += replacement
            continue
        problem = spec.check(values) if spec.check else None
        if problem:
            raise ConfigError(f"{shown}: {problem}")
        notes.append(f"flag {shown} has no effect here because {spec.text}")
    return result, notes


def _own_flags():
    """Flags the generated parser defines; a family rule never shadows one of them."""
    global _OWN_FLAGS
    if _OWN_FLAGS is None:
        from megatron.config.cli import build_parser

        _OWN_FLAGS = frozenset(build_parser()._option_string_actions)
    return _OWN_FLAGS


_OWN_FLAGS = None


def _take_values(flag: str, takes, inline: Optional[str], tokens: List[str], index: int) -> List[str]:
    if takes == SWITCH:
        if inline is not None:
            raise ConfigError(f"{flag} is a switch and takes no value (got {flag}={inline})")
        return []
    if inline is not None:
        return [inline]
    values = []
    while index < len(tokens) and not (tokens[index].startswith("--") and len(tokens[index]) > 2):
        values.append(tokens[index])
        index += 1
        if takes == VALUE:
            break
    if takes == VALUE and not values:
        raise ConfigError(f"{flag} expects a value")
    return values
