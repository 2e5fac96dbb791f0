"""pre_process / post_process stages: a model split in two (embedding + layer 0 | layer 1 + norm + head),
each stage initialising itself from the seed, with the activation and its gradient handed over by hand as a
pipeline would, equals the whole model."""

import pytest

from tests.distributed import distributed_test
from tests.model.twins import assert_close, build_model, loss_and_grads, make_batch, tiny_config


def _split_equals_whole(sequence_parallel):
    from megatron.model import GPTModel, masked_mean_loss

    config = tiny_config("llama")     # untied head: the last stage owns its output layer
    batch = make_batch()
    whole = build_model(config, 2, sequence_parallel=sequence_parallel)
    whole_loss, whole_grads = loss_and_grads(whole, batch)

    config = whole.config  # padded for TP=2
    first = GPTModel(config, sequence_parallel=sequence_parallel, post_process=False, num_layers=1)
    # Nothing is copied: the stage holding layer 1 draws that layer's values itself.
    last = GPTModel(config, sequence_parallel=sequence_parallel, pre_process=False, num_layers=1, layer_offset=1)
    whole_state = whole.state_dict()
    for stage, offset in ((first, 0), (last, 1)):
        for name, value in stage.state_dict().items():
            assert_close(value, whole_state[stage.to_model_name(name)], f"initial {name} (layer offset {offset})",
                         atol=0.0)

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
