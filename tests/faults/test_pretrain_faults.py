"""Faults in whole pretrain() runs on 2 ranks: divergence, the kill switch, the tokenizer of a resume.

Each fault is reproduced, ends the run with its error (or stop reason), leaves `latest` on the last finite
checkpoint, and that checkpoint loads; a stopped run resumes bit-identically.
"""

import os

import torch

from tests.distributed import run_on_ranks
from tests.faults.pretrain_runs import pretrain_outcome, values


def _model_states(folder):
    state = torch.load(os.path.join(folder, "mp_rank_00_model_states.pt"), weights_only=False, map_location="cpu")
    return state["module"]


def test_divergence_stops_at_the_first_non_finite_step_and_saves_nothing_broken(checkpoint_corpus, tmp_path):
    save = str(tmp_path / "diverged")
    # --lr 1e6 (fp32, ZeRO-1): finite for a few steps, then NaN; a save after every step.
    run = values(checkpoint_corpus, lr=1e6, train_iters=12, lr_decay_iters=12, save=save, save_interval=1)
    iteration, _, _, error_type, message = run_on_ranks(2, pretrain_outcome, values=run)[0]
    assert error_type == "TrainingDiverged", message
    bad = int(message.split("training diverged at iteration ")[1].split(":")[0])
    good = bad - 1
    assert good >= 1, message
    assert f"global_step{good}" in message and f"--load {save}" in message and "lower --lr" in message
    assert open(os.path.join(save, "latest")).read() == f"global_step{good}"
    assert not os.path.exists(os.path.join(save, f"global_step{bad}"))
    saved = _model_states(os.path.join(save, f"global_step{good}"))
    assert all(torch.isfinite(tensor).all() for tensor in saved.values() if torch.is_tensor(tensor))

    # The same run stopped one step earlier is finite at every step and saves exactly those weights.
    twin_save = str(tmp_path / "twin")
    twin = values(checkpoint_corpus, lr=1e6, train_iters=12, lr_decay_iters=12, save=twin_save, exit_interval=good)
    twin_iteration, twin_losses, _, twin_error, twin_message = run_on_ranks(2, pretrain_outcome, values=twin)[0]
    assert twin_error is None, twin_message
    assert twin_iteration == good and all(map(lambda loss: loss == loss and abs(loss) != float("inf"), twin_losses))
    twin_saved = _model_states(os.path.join(twin_save, f"global_step{good}"))
    assert saved.keys() == twin_saved.keys()
    for name in saved:
        if torch.is_tensor(saved[name]):
            assert torch.equal(saved[name], twin_saved[name]), name

    # The last good checkpoint loads (every file checked, weights-only), and resuming repeats the divergence
    # at the same iteration, naming the checkpoint it came from.
    resumed = values(checkpoint_corpus, lr=1e6, train_iters=12, lr_decay_iters=12, load=save)
    _, _, _, error_type, message = run_on_ranks(2, pretrain_outcome, values=resumed)[0]
    assert error_type == "TrainingDiverged" and f"training diverged at iteration {bad}:" in message, message
    assert f"--load {save}" in message


def test_kill_switch_saves_stops_and_resumes_bit_identically(checkpoint_corpus, tmp_path):
    uninterrupted = run_on_ranks(2, pretrain_outcome, values=values(checkpoint_corpus))[0]
    switch = tmp_path / "stop-now"
    save = str(tmp_path / "checkpoints")
    from tests.faults import pretrain_runs

    stopped = run_on_ranks(2, pretrain_runs.pretrain_with_switch_at, values=values(
        checkpoint_corpus, save=save, kill_switch_file=str(switch)), switch=str(switch), at_iteration=3)[0]
    assert stopped[:3] == (3, uninterrupted[1][:3], "kill switch file"), stopped
    assert open(os.path.join(save, "latest")).read() == "global_step3"
    os.remove(switch)
    resumed = run_on_ranks(2, pretrain_outcome, values=values(checkpoint_corpus, load=save))[0]
    assert resumed[0] == 6 and resumed[1] == uninterrupted[1][3:], (resumed, uninterrupted)


def test_resume_with_another_tokenizer_of_the_same_padded_size_is_refused(checkpoint_corpus, tmp_path):
    from tests.training.corpus import VOCAB

    save = str(tmp_path / "checkpoints")
    first = run_on_ranks(2, pretrain_outcome, values=values(checkpoint_corpus, save=save, train_iters=3,
                                                            lr_decay_iters=3))[0]
    assert first[3] is None, first[4]
    # VOCAB - 1 ids + EOD pads to the same 128 rows (--make-vocab-size-divisible-by 64): same model shape.
    other = run_on_ranks(2, pretrain_outcome, values=values(checkpoint_corpus, load=save, vocab_size=VOCAB - 1))[0]
    assert other[3] == "CheckpointError", other
    assert "trained with another tokenizer" in other[4] and f"NullTokenizer with {VOCAB + 1} tokens" in other[4]
    assert f"NullTokenizer with {VOCAB} tokens" in other[4]
