"""What the pipeline parity tests share: tiny GPT/Llama configs, fixed data, the single-rank twin.

Every pipelined run initialises itself from SEED (each stage draws its own layers' values, nothing is copied
between runs), at the default vocabulary padding (120 ids: 128 rows at TP=1, 256 at TP=2), trains STEPS
steps on the same global batches with AdamW and active gradient clipping, and must report the losses of the
single-rank run.

The GPT data packs documents: EOD tokens split each sample, and the batches carry position ids and attention
masks reset at every document boundary, so a pipeline that dropped them would report other losses. Llama
batches use plain positions and the causal mask.
"""

import torch

from tests.distributed import get_pool

SEED = 1234
STEPS = 5
MICRO = 2
SEQ = 16
VOCAB = 120
EOD = 0
LR = 3e-3
CLIP = 0.3
RTOL = 1e-4
BF16_ATOL = 2e-2

FAMILIES = {
    "gpt": dict(model_family="gpt", position_embedding_type="learned_absolute", normalization="LayerNorm",
                swiglu=False, add_bias_linear=True, untie_embeddings_and_output_weights=False),
    "llama": dict(model_family="llama", position_embedding_type="rope", normalization="RMSNorm", swiglu=True,
                  add_bias_linear=False, untie_embeddings_and_output_weights=True, ffn_hidden_size=64,
                  num_key_value_heads=2),
}


def model_config(family: str, tensor_parallel: int, num_layers: int = 4):
    from megatron.config.model import ModelConfig

    config = ModelConfig(num_layers=num_layers, hidden_size=32, num_attention_heads=4, seq_length=SEQ,
                         attention_dropout=0.0, hidden_dropout=0.0, **FAMILIES[family])
    return config.with_vocab(VOCAB, tensor_parallel)  # padded as a run at this TP size pads it


def micro_batch(family: str, step: int, index: int) -> dict:
    """Micro-batch ``index`` of global batch ``step``: [MICRO, SEQ] tokens and what the loader adds."""
    from megatron.data.sample_masks import make_sample

    generator = torch.Generator().manual_seed(10_000 * step + index)
    samples = []
    for _ in range(MICRO):
        tokens = torch.randint(1, VOCAB, (SEQ + 1,), generator=generator)
        if family == "gpt":
            tokens[torch.randint(2, SEQ - 2, (4,), generator=generator)] = EOD  # up to five documents per sample
        documents = family == "gpt"
        samples.append(make_sample(tokens, EOD, reset_position_ids=documents, reset_attention_mask=documents))
    return {key: torch.stack([sample[key] for sample in samples]) for key in samples[0]}


def rank_micro_batches(family: str, step: int, micro_batches: int, data_parallel_rank: int,
                       data_parallel_size: int) -> list:
    """This DP rank's share of a global batch: micro-batches d, d + DP, d + 2 DP, ..."""
    return [micro_batch(family, step, j * data_parallel_size + data_parallel_rank) for j in range(micro_batches)]


def deepspeed_config(micro_batches: int, data_parallel_size: int, zero_stage: int, bf16: bool = False,
                     zero_options: dict = None, extra: dict = None) -> dict:
    config = {"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": micro_batches,
              "train_batch_size": MICRO * micro_batches * data_parallel_size, "gradient_clipping": CLIP,
              "zero_optimization": {"stage": zero_stage, **(zero_options or {})}, "steps_per_print": 10 ** 9}
    if bf16:
        config["bf16"] = {"enabled": True}
    config.update(extra or {})
    return config


def optimizer_for(module: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=LR, weight_decay=0.01)


def _without_documents(batch: dict) -> dict:
    """The batch as a pipeline that dropped its masks and position ids would see it."""
    plain = {key: value for key, value in batch.items() if key not in ("attention_mask", "position_ids")}
    plain["position_ids"] = torch.arange(SEQ).expand(MICRO, -1)
    return plain


def _serial_run(family: str, micro_batches: int, num_layers: int, drop_documents: bool = False):
    """Runs on a 1-rank world: GPTModel in a ZeRO-0 fp32 DeepSpeed engine, the non-pipeline training step."""
    import deepspeed

    from megatron.core import parallel_state as ps
    from megatron.model import GPTModel
    from megatron.training.loop import train_step

    ps.initialize_model_parallel()
    config = model_config(family, 1, num_layers)
    model = GPTModel(config, init_seed=SEED)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer_for(model),
                                      config=deepspeed_config(micro_batches, 1, 0), mpu=ps.get_deepspeed_mpu())
    losses, norms = [], []
    for step in range(STEPS):
        batches = rank_micro_batches(family, step, micro_batches, 0, 1)
        if drop_documents:
            batches = [_without_documents(batch) for batch in batches]
        loss, norm, _ = train_step(engine, iter(batches), micro_batches)
        losses.append(loss)
        norms.append(norm)
    engine.destroy()
    return losses, norms


_SERIAL = {}


def serial_run(family: str, global_micro_batches: int, num_layers: int = 4):
    """(losses, grad norms) per step of the single-rank run over ``global_micro_batches`` micro-batches."""
    key = (family, global_micro_batches, num_layers)
    if key not in _SERIAL:
        (losses, norms), = get_pool(1).run(__name__, "_serial_run", dict(family=family,
                                                                        micro_batches=global_micro_batches,
                                                                        num_layers=num_layers), timeout=240)
        assert min(norms) > CLIP, f"gradient clipping must be active in every step of the twin run: {norms}"
        _SERIAL[key] = losses, norms
    return _SERIAL[key]


def serial_losses(family: str, global_micro_batches: int, num_layers: int = 4) -> list:
    return serial_run(family, global_micro_batches, num_layers)[0]


def assert_matches_serial(run, family: str, global_micro_batches: int, what: str, num_layers: int = 4):
    """Losses and the clipped-over global grad norms of a pipelined run equal the single-rank run's (1e-4)."""
    losses, norms = serial_run(family, global_micro_batches, num_layers)
    assert_losses_match(run["losses"], losses, what)
    for step, (norm, expected) in enumerate(zip(run["norms"], norms), start=1):
        assert abs(norm - expected) <= RTOL * expected, f"{what}: step {step} grad norm {norm!r} vs {expected!r}"


def serial_losses_without_documents(family: str, global_micro_batches: int) -> list:
    """The twin trained on the same tokens without document masks and reset positions (a negative control)."""
    (losses, _), = get_pool(1).run(__name__, "_serial_run", dict(family=family, micro_batches=global_micro_batches,
                                                                num_layers=4, drop_documents=True), timeout=240)
    return losses


def assert_losses_match(actual, expected, what, rtol=RTOL, atol=0.0):
    assert len(actual) == len(expected) == STEPS, f"{what}: {len(actual)} vs {len(expected)} steps"
    for step, (a, e) in enumerate(zip(actual, expected)):
        assert abs(a - e) <= rtol * abs(e) + atol, f"{what}: step {step + 1} loss {a!r} vs single-rank {e!r}"


def same_on_all_ranks(results, what):
    assert all(result == results[0] for result in results), f"{what}: ranks report different losses {results}"
    return results[0]
