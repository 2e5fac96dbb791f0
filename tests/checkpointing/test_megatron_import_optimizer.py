"""Resuming a Megatron-DeepSpeed run from its ds_to_universal folder: the optimizer state comes along.

The source is a random small Hugging Face model's weights plus random Adam moments (both in our GPTModel
names), written by tests/checkpointing/megatron_files.py as Megatron-DeepSpeed's TP/PP shards and merged by
ds_to_universal's rules (vocabulary padding dropped, SwiGLU gate|up, blocked or interleaved QKV rows) into
``global_step10_universal/zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt``. ``--load <folder>`` without
``--finetune`` must then
- give back the moments exactly (padding rows zero), Adam's step, the iteration, the consumed samples and
  tokens, and the LR schedule's position;
- make the next step the AdamW step of those moments: the updated fp32 weights equal a directly computed
  AdamW update from the same weights, moments, gradients and learning rate within 1e-6;
- differ from a run that loads the same weights with zero moments (--no-load-optim): negative control;
- at TP=2, give each rank exactly its slice of the moments.
"""

import pytest
import torch

from tests.checkpointing import megatron_files
from tests.checkpointing.test_hf_conversion import _hf_config
from tests.checkpointing.test_megatron_import import _padded_vocab, _tokens, reference_model
from tests.distributed import run_on_ranks

VOCAB = 100
ADAMW_ATOL = 1e-6
CASES = {
    # family, tp, pp, pipeline files, blocked QKV rows (Meg-DS after FPDT)
    "llama_gqa_pipeline_tp2_pp2": ("llama_gqa", 2, 2, True, False),
    "llama_fpdt_blocked_qkv_module_tp2": ("llama_bias_tied", 2, 1, False, True),
}
NEGATIVE_CONTROL_CASE = "llama_gqa_pipeline_tp2_pp2"  # one case suffices; it costs a second run
# Our LR schedule in the resumed run: warmup 2 iterations, cosine decay over 100 (the position is restored).
SCHEDULE = dict(max_lr=3e-4, min_lr=3e-5, warmup_steps=2, decay_steps=100, decay_style="cosine")
WEIGHT_DECAY = 0.01


def source_moments(weights):
    """Adam moments in our names: exp_avg of either sign, exp_avg_sq positive, at a gradient-like scale."""
    generator = torch.Generator().manual_seed(17)
    exp_avg = {name: torch.randn(tensor.shape, generator=generator) * 1e-2 for name, tensor in weights.items()}
    exp_avg_sq = {name: torch.rand(tensor.shape, generator=generator) * 1e-4 + 1e-6
                  for name, tensor in weights.items()}
    return {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


def write_universal_source(case, folder, with_moments=True):
    family, tp, pp, pipeline, blocked = CASES[case]
    weights, _, _ = reference_model(family, VOCAB, torch.float32)
    moments = source_moments(weights) if with_moments else None
    _, model, _ = reference_model(family, VOCAB, torch.float32)
    megatron_files.write_megds_universal(weights, model, folder, tp=tp, pp=pp, padded_vocab=_padded_vocab(VOCAB, tp),
                                         vocab=VOCAB, pipeline=pipeline, blocked=blocked, moments=moments)
    return weights, moments


def _engine_with_schedule(family):
    import deepspeed

    from megatron.checkpointing.hf.import_hf import hf_run_config
    from megatron.core import parallel_state as ps
    from megatron.model import GPTModel
    from megatron.training.lr_schedule import WarmupDecayLR

    config = _hf_config(family)
    config.vocab_size = VOCAB
    run_config = hf_run_config(config.to_dict(), 64)
    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    torch.manual_seed(23)
    model = GPTModel(run_config.model.with_vocab(VOCAB, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=SCHEDULE["max_lr"], weight_decay=WEIGHT_DECAY)
    schedule = WarmupDecayLR(optimizer, **SCHEDULE)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config={
        "train_micro_batch_size_per_gpu": 1, "train_batch_size": 1, "zero_optimization": {"stage": 1},
        "gradient_clipping": 0.0, "steps_per_print": 10 ** 9}, mpu=ps.get_deepspeed_mpu())
    return engine


def resume_one_step(source, family, carry_optimizer):
    """Rank side (one rank, ZeRO-1): --load the Meg-DS folder (no --finetune), read back the carried state,
    take one training step, and return everything the test compares."""
    from deepspeed.utils import (safe_get_full_fp32_param, safe_get_full_grad, safe_get_full_optimizer_state)

    from megatron.checkpointing import load_checkpoint
    from megatron.core import parallel_state as ps

    engine = _engine_with_schedule(family)  # no gradient clipping: the direct AdamW step below has none
    resumed = load_checkpoint(engine, source, no_load_optim=not carry_optimizer, log=lambda _: None)
    params = dict(engine.module.named_parameters())
    before = {name: safe_get_full_fp32_param(param).clone() for name, param in params.items()}
    moments = {key: {name: safe_get_full_optimizer_state(param, key).clone() for name, param in params.items()}
               for key in ("exp_avg", "exp_avg_sq")} if carry_optimizer else None
    adam = engine.optimizer.optimizer
    adam_step = float(next(iter(adam.state.values()))["step"]) if carry_optimizer else None
    lr = adam.param_groups[0]["lr"]
    schedule = engine.lr_scheduler
    position = dict(iteration=resumed.iteration, samples=resumed.consumed_train_samples,
                    tokens=resumed.consumed_train_tokens, global_steps=engine.global_steps,
                    schedule=(schedule.num_steps, schedule.num_samples, schedule.num_tokens), lr=lr)

    tokens = _tokens(VOCAB)
    engine.train()
    losses = []
    loss = engine(tokens[:, :-1], labels=tokens[:, 1:]).mean()
    engine.backward(loss)
    grads = {name: safe_get_full_grad(param).clone() for name, param in params.items()}
    engine.step()
    losses.append(loss.item())
    after = {name: safe_get_full_fp32_param(param).clone() for name, param in params.items()}
    with torch.no_grad():
        losses.append(engine(tokens[:, :-1], labels=tokens[:, 1:]).mean().item())
    betas, eps = adam.param_groups[0]["betas"], adam.param_groups[0]["eps"]
    engine.destroy()
    ps.destroy_model_parallel()
    return dict(position=position, moments=moments, adam_step=adam_step, before=before, after=after, grads=grads,
                losses=losses, betas=betas, eps=eps)


def _adamw(weight, grad, exp_avg, exp_avg_sq, step, lr, betas, eps):
    """torch's AdamW update, written out (step is the count after this update)."""
    beta1, beta2 = betas
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad * grad
    decayed = weight * (1 - lr * WEIGHT_DECAY)
    denominator = exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5 + eps
    return decayed - lr / (1 - beta1 ** step) * exp_avg / denominator


def _expected_moment(moment, shape):
    """The source's moment as this model holds it: the vocabulary padding rows (dropped by ds_to_universal)
    come back as zeros."""
    if moment.shape == shape:
        return moment
    return torch.cat([moment, moment.new_zeros((shape[0] - moment.shape[0],) + tuple(shape[1:]))])


@pytest.mark.parametrize("case", sorted(CASES))
def test_resuming_a_universal_megatron_deepspeed_folder_carries_its_adam_state(case, tmp_path):
    from megatron.training.lr_schedule import WarmupDecayLR

    source = str(tmp_path / "megatron")
    weights, moments = write_universal_source(case, source)
    family = CASES[case][0]
    carried = run_on_ranks(1, resume_one_step, source=source, family=family, carry_optimizer=True)[0]

    iteration, samples = megatron_files.ITERATION, megatron_files.ITERATION * megatron_files.GLOBAL_BATCH
    tokens = samples * 16
    position = carried["position"]
    expected_lr = WarmupDecayLR(torch.optim.SGD([torch.zeros(1)], lr=1.0), **SCHEDULE).lr_at(iteration)
    assert position == dict(iteration=iteration, samples=samples, tokens=tokens, global_steps=iteration,
                            schedule=(iteration, samples, tokens), lr=pytest.approx(expected_lr)), position
    assert carried["adam_step"] == iteration

    for key in ("exp_avg", "exp_avg_sq"):  # exact: the mapping only moves values
        for name, got in carried["moments"][key].items():
            assert torch.equal(got, _expected_moment(moments[key][name], got.shape)), f"{key} of {name} differs"
    for name, got in carried["before"].items():
        assert torch.equal(got, _expected_moment(weights[name], got.shape)), f"fp32 weight {name} differs"

    worst = 0.0
    for name, weight in carried["before"].items():
        expected = _adamw(weight, carried["grads"][name], carried["moments"]["exp_avg"][name],
                          carried["moments"]["exp_avg_sq"][name], iteration + 1, position["lr"],
                          carried["betas"], carried["eps"])
        worst = max(worst, (carried["after"][name] - expected).abs().max().item())
    print(f"{case}: max |resumed step - direct AdamW step from the carried moments| = {worst:.2e}")
    assert worst <= ADAMW_ATOL, f"{case}: the first resumed step is not AdamW from the carried moments ({worst:.2e})"

    if case != NEGATIVE_CONTROL_CASE:
        return
    # Negative control: the same weights with zero moments (--no-load-optim) train differently.
    fresh = run_on_ranks(1, resume_one_step, source=source, family=family, carry_optimizer=False)[0]
    assert fresh["losses"][0] == pytest.approx(carried["losses"][0], abs=1e-6)  # same weights before the step
    moved = abs(fresh["losses"][1] - carried["losses"][1])
    print(f"{case}: loss after the step, carried {carried['losses'][1]:.6f} vs zero moments "
          f"{fresh['losses'][1]:.6f} (|difference| {moved:.2e})")
    assert moved > 1e-4, f"{case}: zero moments gave the same loss as the carried ones ({moved:.2e})"


def load_error(source, family, finetune):
    from megatron.checkpointing import load_checkpoint
    from megatron.checkpointing.safe_load import CheckpointError

    engine = _engine_with_schedule(family)
    try:
        resumed = load_checkpoint(engine, source, finetune=finetune, log=lambda _: None)
        return resumed.iteration
    except CheckpointError as error:
        return str(error)
    finally:
        engine.destroy()


def test_a_universal_folder_without_moments_resumes_only_with_finetune(tmp_path):
    source = str(tmp_path / "megatron")
    write_universal_source("llama_fpdt_blocked_qkv_module_tp2", source, with_moments=False)
    message = run_on_ranks(1, load_error, source=source, family="llama_bias_tied", finetune=False)[0]
    assert "without exp_avg.pt / exp_avg_sq.pt" in message and "or pass --finetune" in message, message
    assert run_on_ranks(1, load_error, source=source, family="llama_bias_tied", finetune=True)[0] == 0


def moments_at_tp2(source, family):
    """Rank side (two ranks, TP=2, ZeRO-1): --load the Meg-DS folder; this rank's TP slices of the moments,
    with how each parameter is split."""
    from deepspeed.utils import safe_get_full_optimizer_state

    from megatron.checkpointing import load_checkpoint
    from megatron.checkpointing.hf.import_hf import hf_run_config
    from megatron.core import parallel_state as ps
    from tests.checkpointing.test_hf_conversion import _our_engine

    config = _hf_config(family)
    config.vocab_size = VOCAB
    engine = _our_engine(hf_run_config(config.to_dict(), 64), tp=2, zero=1)
    resumed = load_checkpoint(engine, source, log=lambda _: None)
    slices = {name: (safe_get_full_optimizer_state(param, "exp_avg_sq").clone(),
                     getattr(param, "partition_dim", None) if getattr(param, "tensor_model_parallel", False) else None)
              for name, param in engine.module.named_parameters()}
    rank = ps.get_tensor_model_parallel_rank()
    engine.destroy()
    ps.destroy_model_parallel()
    return resumed.iteration, rank, slices


def test_moments_are_cut_into_tensor_parallel_slices_at_tp2(tmp_path):
    """The same carried moments loaded at TP=2: each rank holds exactly its slice of the source's moment."""
    case = "llama_gqa_pipeline_tp2_pp2"
    source = str(tmp_path / "megatron")
    _, moments = write_universal_source(case, source)
    for iteration, rank, slices in run_on_ranks(2, moments_at_tp2, source=source, family=CASES[case][0]):
        assert iteration == megatron_files.ITERATION
        for name, (got, dim) in slices.items():
            whole = moments["exp_avg_sq"][name]
            if dim is not None:
                rows = list(got.shape)
                rows[dim] *= 2
                whole = _expected_moment(whole, torch.Size(rows)) if dim == 0 else whole
                whole = whole.chunk(2, dim=dim)[rank]
            assert torch.equal(got, whole), f"rank {rank}: exp_avg_sq of {name} is not its TP slice"
