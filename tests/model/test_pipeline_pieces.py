"""pre_process / post_process stages: a model split in two (embedding + layer 0 | layer 1 + norm + head),
with the activation and its gradient handed over by hand as a pipeline would, equals the whole model."""

import pytest

from tests.distributed import distributed_test
from tests.model.twins import assert_close, build_model, loss_and_grads, make_batch, tiny_config


def _split_equals_whole(sequence_parallel):
    from megatron.model import GPTModel, masked_mean_loss

    config = tiny_config("llama")     # untied head: the last stage owns its output layer
    batch = make_batch()
    whole = build_model(config, 2, sequence_parallel=sequence_parallel)
    whole_loss, whole_grads = loss_and_grads(whole, batch)

    first = GPTModel(config, sequence_parallel=sequence_parallel, post_process=False, num_layers=1)
    last = GPTModel(config, sequence_parallel=sequence_parallel, pre_process=False, num_layers=1)
    state = whole.state_dict()
    first.load_state_dict({k: v for k, v in state.items() if not k.startswith(("layers.1.", "final_norm.",
                                                                                "output_layer."))})
    last.load_state_dict({k.replace("layers.1.", "layers.0."): v for k, v in state.items()
                          if k.startswith(("layers.1.", "final_norm.", "output_layer."))})

    sent = first(batch["tokens"])                                   # [s(/tp), b, h] for the next stage
    received = sent.detach().requires_grad_()
    loss = masked_mean_loss(last(hidden_states=received, labels=batch["labels"]), batch["loss_mask"])
    loss.backward()
    sent.backward(received.grad)

    assert_close(loss, whole_loss, "loss")
    for name, param in first.named_parameters():
        assert_close(param.grad, whole_grads[name], f"first stage grad of {name}")
    for name, param in last.named_parameters():
        assert_close(param.grad, whole_grads[name.replace("layers.0.", "layers.1.")], f"last stage grad of {name}")


@pytest.mark.parametrize("sequence_parallel", [False, True])
@distributed_test(world_size=2)
def test_two_stages_equal_the_whole_model(sequence_parallel):
    _split_equals_whole(sequence_parallel)
