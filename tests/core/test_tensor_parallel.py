"""Every tensor-parallel primitive against its serial twin (fp32, max abs error <= 1e-5) at TP=2 and TP=4.

Each rank builds the TP layer and, from the same seed, the serial nn.Linear / nn.Embedding / F.cross_entropy
twin with the full weights; forward outputs, input gradients and this rank's slice of the weight gradients
must match.
"""

import pytest
import torch
import torch.nn.functional as F

from tests.distributed import distributed_test

ATOL = 1e-5
TP_SIZES = [2, 4]


def _setup(tp):
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(tensor_model_parallel_size=tp)
    return ps.get_tensor_model_parallel_rank(), tp


def _assert_close(actual, expected, what):
    error = (actual - expected).abs().max().item()
    assert error <= ATOL, f"{what}: max abs error {error:.3e} > {ATOL}"


def _full_weight(shape, seed, std=0.02):
    torch.manual_seed(seed)
    weight = torch.empty(shape)
    torch.nn.init.normal_(weight, std=std)
    return weight


def _run_column(tp, gather_output, skip_bias_add, sequence_parallel):
    from megatron.core.tensor_parallel import ColumnParallelLinear, gather_from_tensor_model_parallel_region
    from megatron.core.tensor_parallel.mappings import scatter_to_sequence_parallel_region

    rank, tp = _setup(tp)
    seq, batch, hidden, out = 8, 3, 12, 16
    torch.manual_seed(1)
    layer = ColumnParallelLinear(hidden, out, gather_output=gather_output, skip_bias_add=skip_bias_add,
                                 sequence_parallel=sequence_parallel)
    with torch.no_grad():
        layer.bias.copy_(torch.linspace(-1, 1, out).chunk(tp)[rank])
    serial = torch.nn.Linear(hidden, out)
    with torch.no_grad():
        serial.weight.copy_(_full_weight((out, hidden), seed=1))
        serial.bias.copy_(torch.linspace(-1, 1, out))
    _assert_close(layer.weight, serial.weight.chunk(tp, dim=0)[rank], "initial weight shard")

    torch.manual_seed(2)
    x = torch.randn(seq, batch, hidden, requires_grad=True)
    grad_out = torch.randn(seq, batch, out)
    x_local = x.detach().clone().requires_grad_(True)
    layer_input = scatter_to_sequence_parallel_region(x_local) if sequence_parallel else x_local
    result = layer(layer_input)
    y, bias = result if skip_bias_add else (result, None)
    if bias is not None:
        y = y + bias
    if not gather_output:
        y = gather_from_tensor_model_parallel_region(y)
    y.backward(grad_out)

    y_ref = serial(x)
    y_ref.backward(grad_out)
    _assert_close(y, y_ref, "output")
    _assert_close(x_local.grad, x.grad, "input grad")
    _assert_close(layer.weight.grad, serial.weight.grad.chunk(tp, dim=0)[rank], "weight grad shard")
    _assert_close(layer.bias.grad, serial.bias.grad.chunk(tp)[rank], "bias grad shard")
    assert layer.weight.tensor_model_parallel and layer.weight.partition_dim == 0
    assert layer.weight.partition_stride == 1 and layer.bias.tensor_model_parallel


@pytest.mark.parametrize("gather_output, skip_bias_add", [(True, False), (False, False), (False, True)])
@distributed_test(world_size=2)
def test_column_parallel_linear_tp2(gather_output, skip_bias_add):
    _run_column(2, gather_output, skip_bias_add, sequence_parallel=False)


@pytest.mark.parametrize("gather_output, skip_bias_add", [(True, False), (False, True)])
@distributed_test(world_size=4)
def test_column_parallel_linear_tp4(gather_output, skip_bias_add):
    _run_column(4, gather_output, skip_bias_add, sequence_parallel=False)


@pytest.mark.parametrize("tp", TP_SIZES)
def test_column_parallel_linear_sequence_parallel(tp):
    distributed_test(world_size=tp)(_column_sequence_parallel)(tp=tp)


def _column_sequence_parallel(tp):
    _run_column(tp, gather_output=False, skip_bias_add=False, sequence_parallel=True)


def _run_row(tp, input_is_parallel, skip_bias_add, sequence_parallel):
    from megatron.core.tensor_parallel import RowParallelLinear
    from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

    rank, tp = _setup(tp)
    seq, batch, hidden, out = 8, 2, 16, 12
    torch.manual_seed(3)
    layer = RowParallelLinear(hidden, out, input_is_parallel=input_is_parallel, skip_bias_add=skip_bias_add,
                              sequence_parallel=sequence_parallel)
    with torch.no_grad():
        layer.bias.copy_(torch.linspace(-1, 1, out))
    serial = torch.nn.Linear(hidden, out)
    with torch.no_grad():
        serial.weight.copy_(_full_weight((out, hidden), seed=3))
        serial.bias.copy_(torch.linspace(-1, 1, out))

    torch.manual_seed(4)
    x = torch.randn(seq, batch, hidden, requires_grad=True)
    grad_out = torch.randn(seq, batch, out)
    x_local = (x.detach().chunk(tp, dim=-1)[rank] if input_is_parallel else x.detach()).clone().requires_grad_()
    result = layer(x_local)
    y, bias = result if skip_bias_add else (result, None)
    if bias is not None:
        y = y + bias
    if sequence_parallel:
        # The output is sequence-sharded; gather it (replicated consumer) to compare with the full output.
        y = gather_from_sequence_parallel_region(y, tensor_parallel_output_grad=False)
    y.backward(grad_out)

    y_ref = serial(x)
    y_ref.backward(grad_out)
    _assert_close(y, y_ref, "output")
    expected_input_grad = x.grad.chunk(tp, dim=-1)[rank] if input_is_parallel else x.grad
    _assert_close(x_local.grad, expected_input_grad, "input grad")
    _assert_close(layer.weight.grad, serial.weight.grad.chunk(tp, dim=1)[rank], "weight grad shard")
    _assert_close(layer.bias.grad, serial.bias.grad, "replicated bias grad")
    assert layer.weight.tensor_model_parallel and layer.weight.partition_dim == 1
    assert not layer.bias.tensor_model_parallel


@pytest.mark.parametrize("input_is_parallel, skip_bias_add", [(True, False), (False, False), (True, True)])
@distributed_test(world_size=2)
def test_row_parallel_linear_tp2(input_is_parallel, skip_bias_add):
    _run_row(2, input_is_parallel, skip_bias_add, sequence_parallel=False)


@pytest.mark.parametrize("input_is_parallel", [True, False])
@distributed_test(world_size=4)
def test_row_parallel_linear_tp4(input_is_parallel):
    _run_row(4, input_is_parallel, skip_bias_add=False, sequence_parallel=False)


@pytest.mark.parametrize("tp", TP_SIZES)
def test_row_parallel_linear_sequence_parallel(tp):
    distributed_test(world_size=tp)(_row_sequence_parallel)(tp=tp)


def _row_sequence_parallel(tp):
    _run_row(tp, input_is_parallel=True, skip_bias_add=False, sequence_parallel=True)


def _sequence_parallel_mlp(tp):
    """Column -> GELU -> Row with sequence parallelism, as in a transformer MLP, against the serial MLP."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.tensor_parallel.mappings import (gather_from_sequence_parallel_region,
                                                        scatter_to_sequence_parallel_region)

    rank, tp = _setup(tp)
    seq, batch, hidden, ffn = 8, 2, 8, 32
    torch.manual_seed(5)
    fc1 = ColumnParallelLinear(hidden, ffn, sequence_parallel=True)
    fc2 = RowParallelLinear(ffn, hidden, input_is_parallel=True, sequence_parallel=True)
    serial1, serial2 = torch.nn.Linear(hidden, ffn), torch.nn.Linear(ffn, hidden)
    torch.manual_seed(5)
    w1, w2 = torch.empty(ffn, hidden).normal_(std=0.02), torch.empty(hidden, ffn).normal_(std=0.02)
    with torch.no_grad():
        serial1.weight.copy_(w1), serial1.bias.zero_(), serial2.weight.copy_(w2), serial2.bias.zero_()

    torch.manual_seed(6)
    x = torch.randn(seq, batch, hidden, requires_grad=True)
    x_local = scatter_to_sequence_parallel_region(x.detach().clone()).requires_grad_()
    y_local = fc2(F.gelu(fc1(x_local)))
    assert y_local.shape == (seq // tp, batch, hidden)
    grad_out = torch.randn(seq, batch, hidden)
    y_local.backward(grad_out.chunk(tp, dim=0)[rank])
    y = gather_from_sequence_parallel_region(y_local.detach(), tensor_parallel_output_grad=False)
    y_ref = serial2(F.gelu(serial1(x)))
    y_ref.backward(grad_out)
    _assert_close(y, y_ref, "output")
    _assert_close(x_local.grad, x.grad.chunk(tp, dim=0)[rank], "input grad shard")
    _assert_close(fc1.weight.grad, serial1.weight.grad.chunk(tp, dim=0)[rank], "fc1 weight grad")
    _assert_close(fc2.weight.grad, serial2.weight.grad.chunk(tp, dim=1)[rank], "fc2 weight grad")
    # The row bias sees only this rank's tokens; the sequence-parallel hook sums it over TP.
    _assert_close(fc2.bias.grad, serial2.bias.grad, "sequence-parallel replicated bias grad")


@pytest.mark.parametrize("tp", TP_SIZES)
def test_sequence_parallel_mlp_matches_serial(tp):
    distributed_test(world_size=tp)(_sequence_parallel_mlp)(tp=tp)


def _embedding(tp):
    from megatron.core.tensor_parallel import VocabParallelEmbedding, pad_vocab_size

    rank, tp = _setup(tp)
    vocab, hidden = 37, 8  # odd: needs padding
    padded = pad_vocab_size(vocab, make_vocab_size_divisible_by=4, tensor_model_parallel_size=tp)
    assert padded == (40 if tp == 2 else 48) and padded % (4 * tp) == 0
    torch.manual_seed(7)
    layer = VocabParallelEmbedding(padded, hidden)
    serial = torch.nn.Embedding(padded, hidden)
    with torch.no_grad():
        serial.weight.copy_(_full_weight((padded, hidden), seed=7))
    assert layer.weight.shape == (padded // tp, hidden) and layer.weight.partition_dim == 0
    ids = torch.randint(0, vocab, (3, 5), generator=torch.Generator().manual_seed(8))
    ids[0, 0], ids[0, 1] = 0, vocab - 1
    grad_out = torch.randn(3, 5, hidden)
    y = layer(ids)
    y.backward(grad_out)
    y_ref = serial(ids)
    y_ref.backward(grad_out)
    _assert_close(y, y_ref, "embedding output")
    _assert_close(layer.weight.grad, serial.weight.grad.chunk(tp, dim=0)[rank], "embedding weight grad shard")


@pytest.mark.parametrize("tp", TP_SIZES)
def test_vocab_parallel_embedding_with_padded_odd_vocab(tp):
    distributed_test(world_size=tp)(_embedding)(tp=tp)


def _cross_entropy(tp, label_smoothing):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    rank, tp = _setup(tp)
    seq, batch, vocab = 6, 3, 48
    generator = torch.Generator().manual_seed(9)
    logits = (torch.randn(seq, batch, vocab, generator=generator) * 3).requires_grad_()
    target = torch.randint(0, vocab, (seq, batch), generator=generator)
    target[0, 0], target[0, 1] = 0, vocab - 1
    local = logits.detach().chunk(tp, dim=-1)[rank].clone().requires_grad_()
    loss = vocab_parallel_cross_entropy(local, target, label_smoothing=label_smoothing)
    weights = torch.rand(seq, batch, generator=generator)
    (loss * weights).sum().backward()
    loss_ref = F.cross_entropy(logits.view(-1, vocab), target.view(-1), reduction="none",
                               label_smoothing=label_smoothing).view(seq, batch)
    (loss_ref * weights).sum().backward()
    _assert_close(loss, loss_ref, "per-token loss")
    _assert_close(local.grad, logits.grad.chunk(tp, dim=-1)[rank], "logit grad shard")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("tp", TP_SIZES)
def test_vocab_parallel_cross_entropy(tp, label_smoothing):
    distributed_test(world_size=tp)(_cross_entropy)(tp=tp, label_smoothing=label_smoothing)


def _rng_tracker(tp):
    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import get_rng_tracker, model_parallel_manual_seed

    _setup(tp)
    model_parallel_manual_seed(1234)
    x = torch.ones(64, 64)
    outside_before = F.dropout(x, p=0.5)
    with get_rng_tracker().fork():
        inside = F.dropout(x, p=0.5)
    outside_after = F.dropout(x, p=0.5)

    group = ps.get_tensor_model_parallel_group()

    def gathered(tensor):
        out = torch.empty((tp * tensor.size(0),) + tuple(tensor.shape[1:]))
        comm.all_gather_into_tensor(out, tensor.contiguous(), group=group)
        return out.view((tp,) + tuple(tensor.shape))

    for name, tensor in (("before", outside_before), ("after", outside_after)):
        all_ranks = gathered(tensor)
        assert all(torch.equal(all_ranks[0], all_ranks[r]) for r in range(tp)), f"outside masks differ ({name})"
    all_inside = gathered(inside)
    for a in range(tp):
        for b in range(a + 1, tp):
            assert not torch.equal(all_inside[a], all_inside[b]), f"TP ranks {a} and {b} drew the same mask"
    # Forking does not disturb the default stream: a fresh seed without the fork gives the same 'after'.
    model_parallel_manual_seed(1234)
    F.dropout(x, p=0.5)
    assert torch.equal(F.dropout(x, p=0.5), outside_after)


@pytest.mark.parametrize("tp", TP_SIZES)
def test_rng_tracker_differs_inside_and_matches_outside(tp):
    distributed_test(world_size=tp)(_rng_tracker)(tp=tp)


@pytest.mark.parametrize("tp", TP_SIZES)
def test_weights_are_identical_for_every_tp_size(tp):
    distributed_test(world_size=tp)(_tp_invariant_init)(tp=tp)


def _tp_invariant_init(tp):
    """A stack of layers built from one seed equals the TP=1 stack built from the same seed, shard by shard."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

    def build():
        torch.manual_seed(11)
        return [VocabParallelEmbedding(32, 8), ColumnParallelLinear(8, 16), RowParallelLinear(16, 8)]

    rank, tp = _setup(tp)
    sharded = build()
    ps.destroy_model_parallel()
    ps.initialize_model_parallel(tensor_model_parallel_size=1)
    full = build()
    for s, f in zip(sharded, full):
        torch.testing.assert_close(s.weight, f.weight.chunk(tp, dim=s.weight.partition_dim)[rank], rtol=0, atol=0)
