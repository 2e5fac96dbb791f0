"""The default path of the main job: no --data-path, so the built-in English corpus is built and trained on."""

from tests.distributed import run_on_ranks


def _train_on_builtin_corpus(cache_dir):
    from megatron.config import resolve_config
    from megatron.data import unigram_entropy
    from megatron.training.data_setup import build_training_data
    from megatron.training.pretrain import pretrain

    values = dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=64, micro_batch_size=16,
                  global_batch_size=16, train_iters=30, lr=5e-3, min_lr=5e-4, lr_warmup_iters=5,
                  lr_decay_style="cosine", clip_grad=1.0, log_interval=10, eval_interval=30, eval_iters=1,
                  data_cache_path=cache_dir, num_workers=0)
    config = resolve_config(values, deepspeed_config={"zero_optimization": {"stage": 1}}, world_size=1)
    state = pretrain(config, printer=lambda message: None)
    data = build_training_data(config, printer=lambda message: None)  # cached now: returns at once
    sample = data.train_dataset[0]["tokens"].tolist()
    return state.losses, unigram_entropy(data.data_prefix[0]), data.tokenizer.detokenize(sample)


def test_training_on_the_builtin_corpus(tmp_path):
    """Builds the corpus and tokenizer from nothing and learns at least its token frequencies.

    Going well below the unigram entropy (learning context) takes a few hundred steps of a bigger model: the
    README's main command does that (loss ~5.2 against an entropy of ~6.5 after 200 iterations); here the
    point is that the default path works end to end, so 30 steps must get from ln(8000) ~ 9.0 to the unigram
    plateau's neighbourhood.
    """
    losses, entropy, text = run_on_ranks(1, _train_on_builtin_corpus, cache_dir=str(tmp_path))[0]
    assert sum(ch.isalpha() for ch in text) > len(text) / 2, f"samples do not look like English text: {text!r}"
    assert 6.0 < entropy < 8.0, f"unigram entropy {entropy} nats/token is implausible for an 8000-piece English corpus"
    assert losses[0] > 8.5, f"an untrained model should be near ln(8000) = 8.99, got {losses[0]}"
    final = sum(losses[-5:]) / 5
    assert final < entropy + 0.6, f"mean loss of the last 5 steps {final:.3f} is not near the unigram entropy " \
                                  f"{entropy:.3f} (losses {losses})"
