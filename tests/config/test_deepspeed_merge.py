"""Merging flags with the DeepSpeed JSON: who owns what, filling, and every contradiction."""

import re

import pytest

from megatron.config import ConfigError, parse_config, resolve_config
from megatron.config.deepspeed_json import JSON_OWNED

TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, seq_length=128, train_iters=10, lr=1e-4)


def merged(flags, ds, ds_json, world_size=1):
    """Resolve the tiny flags plus `flags` against the JSON object `ds` written to ds.json."""
    base = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "128",
            "--train-iters", "10"]
    if "--lr" not in flags and "optimizer" not in ds:
        base += ["--lr", "1e-4"]
    return parse_config(base + flags + ["--deepspeed_config", ds_json(ds)], world_size=world_size)


# --- no JSON: the flags write everything DeepSpeed needs ------------------------------------------------
def test_without_json_the_flags_write_the_deepspeed_dict():
    config = resolve_config(dict(TINY, micro_batch_size=2, global_batch_size=16), world_size=4)
    assert config.deepspeed_config == {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 16,
                                       "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 0},
                                       "gradient_clipping": 1.0}
    assert not config.deepspeed_builds_optimizer and not config.deepspeed_builds_scheduler


def test_deepspeed_dict_is_a_fresh_copy():
    config = resolve_config(TINY)
    config.deepspeed_dict()["zero_optimization"]["stage"] = 3
    assert config.deepspeed_config["zero_optimization"]["stage"] == 0


def test_the_input_json_dict_is_not_modified():
    ds = {"zero_optimization": {"stage": 1}}
    resolve_config(TINY, deepspeed_config=ds)
    assert ds == {"zero_optimization": {"stage": 1}}


# --- batch sizes --------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, ds, world, expected", [
    ([], {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2}, 2, (2, 16, 4)),
    ([], {"train_batch_size": 16, "gradient_accumulation_steps": 2}, 2, (4, 16, 2)),
    ([], {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}, 2, (2, 12, 3)),
    (["--micro-batch-size", "2"], {"gradient_accumulation_steps": 3}, 2, (2, 12, 3)),
    (["--global-batch-size", "12"], {"train_micro_batch_size_per_gpu": 3}, 2, (3, 12, 2)),
    ([], {"train_batch_size": 8}, 2, (1, 8, 4)),
    ([], {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto"}, 2, (1, 2, 1)),
    (["--micro-batch-size", "2"], {"train_micro_batch_size_per_gpu": 2, "train_batch_size": 8}, 2, (2, 8, 2)),
])
def test_any_two_batch_numbers_determine_the_third(ds_json, flags, ds, world, expected):
    config = merged(flags, ds, ds_json, world)
    t = config.training
    assert (t.micro_batch_size, t.global_batch_size, t.gradient_accumulation_steps) == expected
    d = config.deepspeed_config
    assert (d["train_micro_batch_size_per_gpu"], d["train_batch_size"], d["gradient_accumulation_steps"]) == expected


@pytest.mark.parametrize("flags, ds, world, message", [
    (["--micro-batch-size", "4"], {"train_micro_batch_size_per_gpu": 2}, 1,
     "--micro-batch-size 4 contradicts train_micro_batch_size_per_gpu=2 in {path}; drop one"),
    (["--global-batch-size", "32"], {"train_batch_size": 16}, 1,
     "--global-batch-size 32 contradicts train_batch_size=16 in {path}; drop one"),
    ([], {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 3}, 2,
     "batch sizes disagree: train_batch_size=16 in {path}, but train_micro_batch_size_per_gpu=2 in {path} x "
     "gradient_accumulation_steps=3 in {path} x data_parallel_size 2 = 12; give only two of the three"),
    (["--global-batch-size", "10", "--micro-batch-size", "2"], {}, 2,
     "--global-batch-size 10 is not divisible by --micro-batch-size 2 x data_parallel_size 2 = 4"),
    ([], {"train_batch_size": 10, "gradient_accumulation_steps": 4}, 1,
     "train_batch_size=10 in {path} is not divisible by gradient_accumulation_steps=4 in {path} x "
     "data_parallel_size 1"),
    ([], {"gradient_accumulation_steps": 0}, 1, "gradient_accumulation_steps=0 in {path} must be >= 1"),
    ([], {"train_batch_size": "16"}, 1, 'train_batch_size must be an integer, got "16"'),
])
def test_batch_contradictions_name_the_numbers(ds_json, flags, ds, world, message):
    with pytest.raises(ConfigError) as error:
        merged(flags, ds, ds_json, world)
    assert message.format(path=ds_json(ds)) in str(error.value)


# --- every JSON-owned setting: the JSON wins over defaults, an explicit flag must agree ----------------
# (flags, JSON, expected message); one row per JSON_OWNED entry that a flag can contradict.
CONTRADICTIONS = {
    "micro_batch_size": (["--micro-batch-size", "4"], {"train_micro_batch_size_per_gpu": 2},
                         "--micro-batch-size 4 contradicts train_micro_batch_size_per_gpu=2"),
    "global_batch_size": (["--global-batch-size", "4"], {"train_batch_size": 2},
                          "--global-batch-size 4 contradicts train_batch_size=2"),
    "stage": (["--zero-stage", "2"], {"zero_optimization": {"stage": 3}},
              "--zero-stage 2 contradicts zero_optimization.stage=3"),
    "offload_optimizer": (["--offload-optimizer", "none"],
                          {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
                          "--offload-optimizer none contradicts zero_optimization.offload_optimizer.device=\"cpu\""),
    "offload_param": (["--offload-param", "none"],
                      {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}},
                      "--offload-param none contradicts zero_optimization.offload_param.device=\"cpu\""),
    "bf16": (["--bf16"], {"fp16": {"enabled": True}}, "--bf16 contradicts fp16.enabled=true"),
    "fp16": (["--fp16"], {"bf16": {"enabled": True}}, "--fp16 contradicts bf16.enabled=true"),
    "loss_scale": (["--fp16", "--loss-scale", "128"], {"fp16": {"enabled": True, "loss_scale": 0}},
                   "--loss-scale 128.0 contradicts fp16.loss_scale=0"),
    "initial_loss_scale": (["--fp16", "--initial-loss-scale", "1024"],
                           {"fp16": {"enabled": True, "initial_scale_power": 16}},
                           "--initial-loss-scale 1024.0 contradicts fp16.initial_scale_power=16"),
    "loss_scale_window": (["--fp16", "--loss-scale-window", "500"],
                          {"fp16": {"enabled": True, "loss_scale_window": 1000}},
                          "--loss-scale-window 500 contradicts fp16.loss_scale_window=1000"),
    "hysteresis": (["--fp16", "--hysteresis", "4"], {"fp16": {"enabled": True, "hysteresis": 2}},
                   "--hysteresis 4 contradicts fp16.hysteresis=2"),
    "min_loss_scale": (["--fp16", "--min-loss-scale", "2"], {"fp16": {"enabled": True, "min_loss_scale": 1}},
                       "--min-loss-scale 2.0 contradicts fp16.min_loss_scale=1"),
    "clip_grad": (["--clip-grad", "1.0"], {"gradient_clipping": 0.5},
                  "--clip-grad 1.0 contradicts gradient_clipping=0.5"),
    "lr": (["--lr", "1e-3"], {"optimizer": {"type": "AdamW", "params": {"lr": 3e-4}}},
           "--lr 0.001 contradicts optimizer.params.lr=0.0003"),
    "weight_decay": (["--weight-decay", "0.01"], {"optimizer": {"type": "AdamW", "params": {"weight_decay": 0.1}}},
                     "--weight-decay 0.01 contradicts optimizer.params.weight_decay=0.1"),
    "adam_beta1": (["--adam-beta1", "0.8"], {"optimizer": {"type": "Adam", "params": {"betas": [0.9, 0.95]}}},
                   "--adam-beta1 0.8 contradicts optimizer.params.betas[0]=0.9"),
    "adam_beta2": (["--adam-beta2", "0.95"], {"optimizer": {"type": "Adam", "params": {"betas": [0.9, 0.999]}}},
                   "--adam-beta2 0.95 contradicts optimizer.params.betas[1]=0.999"),
    "adam_eps": (["--adam-eps", "1e-6"], {"optimizer": {"type": "AdamW", "params": {"eps": 1e-8}}},
                 "--adam-eps 1e-06 contradicts optimizer.params.eps=1e-08"),
    "lr_decay_style": (["--lr-decay-style", "cosine"],
                       {"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 2}}},
                       "--lr-decay-style cosine contradicts scheduler.type=WarmupDecayLR (linear decay)"),
    "lr_warmup_iters": (["--lr-warmup-iters", "3"], {"scheduler": {"type": "WarmupLR",
                                                                   "params": {"warmup_num_steps": 2}}},
                        "--lr-warmup-iters 3 contradicts scheduler.params.warmup_num_steps=2"),
    "lr_decay_iters": (["--lr-decay-iters", "8"],
                       {"scheduler": {"type": "WarmupDecayLR",
                                      "params": {"warmup_num_steps": 2, "total_num_steps": 10}}},
                       "--lr-decay-iters 8 contradicts scheduler.params.total_num_steps=10"),
    "min_lr": (["--min-lr", "1e-5"], {"scheduler": {"type": "WarmupDecayLR",
                                                    "params": {"warmup_num_steps": 2, "warmup_min_lr": 0}}},
               "--min-lr 1e-05 contradicts scheduler.params.warmup_min_lr=0"),
    "partition_activations": (["--checkpoint-activations", "--partition-activations"],
                              {"activation_checkpointing": {"partition_activations": False}},
                              "--partition-activations contradicts activation_checkpointing.partition_activations"
                              "=false"),
    "checkpoint_in_cpu": (["--checkpoint-activations", "--checkpoint-in-cpu"],
                          {"activation_checkpointing": {"cpu_checkpointing": False}},
                          "--checkpoint-in-cpu contradicts activation_checkpointing.cpu_checkpointing=false"),
    "contiguous_checkpointing": (["--checkpoint-activations", "--partition-activations",
                                  "--contigious-checkpointing"],
                                 {"activation_checkpointing": {"contiguous_memory_optimization": False}},
                                 "--contigious-checkpointing contradicts "
                                 "activation_checkpointing.contiguous_memory_optimization=false"),
    "synchronize_each_layer": (["--checkpoint-activations", "--synchronize-each-layer"],
                               {"activation_checkpointing": {"synchronize_checkpoint_boundary": False}},
                               "--synchronize-each-layer contradicts "
                               "activation_checkpointing.synchronize_checkpoint_boundary=false"),
    "profile_backward": (["--checkpoint-activations", "--profile-backward"],
                         {"activation_checkpointing": {"profile": False}},
                         "--profile-backward contradicts activation_checkpointing.profile=false"),
    "universal_checkpoint": (["--universal-checkpoint", "--load", "ckpt"], {"checkpoint": {"load_universal": False}},
                             "--universal-checkpoint contradicts checkpoint.load_universal=false"),
}


def test_every_json_owned_setting_has_a_contradiction_case():
    flagless = {"gradient_accumulation_steps"}
    assert {name for name, _, _ in JSON_OWNED} - flagless == set(CONTRADICTIONS)


@pytest.mark.parametrize("name", sorted(CONTRADICTIONS))
def test_explicit_flag_contradicting_the_json_is_an_error(ds_json, name):
    flags, ds, message = CONTRADICTIONS[name]
    with pytest.raises(ConfigError) as error:
        merged(flags, ds, ds_json)
    path = ds_json(ds)
    assert str(error.value) == f"{message} in {path}; drop one"


# --- the JSON fills the config; flags fill the JSON ------------------------------------------------
def test_json_values_win_over_flag_defaults(ds_json):
    ds = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}, "gradient_clipping": 0.5,
          "bf16": {"enabled": True}}
    config = merged([], ds, ds_json)
    assert (config.zero.stage, config.zero.offload_param, config.zero.offload_optimizer) == (3, "cpu", "none")
    assert config.training.clip_grad == 0.5 and config.precision.bf16


def test_flags_are_written_into_the_json(ds_json):
    flags = ["--zero-stage", "2", "--offload-optimizer", "cpu", "--clip-grad", "0.3", "--bf16",
             "--checkpoint-activations", "--partition-activations", "--universal-checkpoint", "--load", "ck"]
    ds = merged(flags, {"steps_per_print": 5}, ds_json).deepspeed_config
    assert ds["steps_per_print"] == 5  # keys the merge does not own pass through untouched
    assert ds["zero_optimization"] == {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    assert (ds["gradient_clipping"], ds["bf16"], ds["checkpoint"]) == (0.3, {"enabled": True},
                                                                       {"load_universal": True})
    assert ds["activation_checkpointing"] == {"partition_activations": True, "cpu_checkpointing": False,
                                              "contiguous_memory_optimization": False,
                                              "synchronize_checkpoint_boundary": False, "profile": False}


def test_legacy_bfloat16_key_is_read(ds_json):
    config = merged([], {"bfloat16": {"enabled": True}}, ds_json)
    assert config.precision.bf16 and "bf16" not in config.deepspeed_config


def test_fp16_block_is_completed_with_dynamic_loss_scaling(ds_json):
    config = merged(["--fp16", "--initial-loss-scale", "4096", "--hysteresis", "3"], {}, ds_json)
    assert config.deepspeed_config["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 12,
                                               "loss_scale_window": 1000, "hysteresis": 3, "min_loss_scale": 1.0}
    assert config.precision.loss_scale is None


def test_fp16_json_values_fill_the_precision_config(ds_json):
    ds = {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 20, "loss_scale_window": 50}}
    precision = merged([], ds, ds_json).precision
    assert (precision.fp16, precision.initial_loss_scale, precision.loss_scale_window) == (True, 2.0 ** 20, 50)


def test_static_loss_scale(ds_json):
    assert merged([], {"fp16": {"enabled": True, "loss_scale": 128}}, ds_json).precision.loss_scale == 128.0


@pytest.mark.parametrize("flags, ds, message", [
    (["--fp16", "--initial-loss-scale", "1000"], {}, "--initial-loss-scale 1000.0 is not a power of 2"),
    ([], {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "nvme"}}},
     'zero_optimization.offload_optimizer.device="nvme" is not supported here; use "none" or "cpu"'),
    ([], {"zero_optimization": {"stage": 2, "cpu_offload": True}},
     "zero_optimization.cpu_offload in {path} is deprecated by DeepSpeed"),
    ([], {"zero_optimization": 2}, "zero_optimization in {path} must be a JSON object, got 2"),
    ([], {"bf16": {"enabled": "yes"}}, 'bf16.enabled must be true or false, got "yes"'),
])
def test_invalid_json_values_and_useless_flags(ds_json, flags, ds, message):
    with pytest.raises(ConfigError) as error:
        merged(flags, ds, ds_json)
    assert message.format(path=ds_json(ds)) in str(error.value)


# --- optimizer block ---------------------------------------------------------------------------------
def test_optimizer_block_is_completed_from_flags(ds_json):
    flags = ["--lr", "2e-4", "--adam-beta2", "0.95", "--weight-decay", "0.1"]
    config = merged(flags, {"optimizer": {"type": "AdamW"}}, ds_json)
    assert config.deepspeed_config["optimizer"] == {
        "type": "AdamW", "params": {"lr": 2e-4, "weight_decay": 0.1, "eps": 1e-8, "betas": [0.9, 0.95]}}
    assert config.deepspeed_builds_optimizer


def test_optimizer_block_values_fill_the_training_config(ds_json):
    ds = {"optimizer": {"type": "Adam", "params": {"lr": 3e-4, "betas": [0.8, 0.9], "eps": 1e-6,
                                                   "weight_decay": 0.0}}}
    t = merged([], ds, ds_json).training
    assert (t.lr, t.adam_beta1, t.adam_beta2, t.adam_eps, t.weight_decay) == (3e-4, 0.8, 0.9, 1e-6, 0.0)


def test_adam_flags_under_a_non_adam_optimizer_are_errors(ds_json):
    with pytest.raises(ConfigError, match="--adam-beta1 0.8 has no effect with optimizer type SGD"):
        merged(["--adam-beta1", "0.8"], {"optimizer": {"type": "SGD", "params": {"lr": 0.1}}}, ds_json)


def test_optimizer_without_lr_anywhere_is_an_error(ds_json):
    with pytest.raises(ConfigError, match=re.escape("--lr is required (or optimizer.params.lr")):
        merged([], {"optimizer": {"type": "AdamW"}}, ds_json)


def test_optimizer_needs_a_type(ds_json):
    with pytest.raises(ConfigError, match='optimizer in .* needs a "type" string'):
        merged([], {"optimizer": {"params": {"lr": 1e-3}}}, ds_json)


# --- scheduler block ---------------------------------------------------------------------------------
def test_warmup_decay_scheduler_is_completed_and_mirrored(ds_json):
    ds = {"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 3}}}
    config = merged(["--min-lr", "1e-5"], ds, ds_json)
    assert config.deepspeed_config["scheduler"]["params"] == {
        "warmup_num_steps": 3, "total_num_steps": 10, "warmup_max_lr": 1e-4, "warmup_min_lr": 1e-5}
    t = config.training
    assert (t.lr_decay_style, t.lr_warmup_iters, t.lr_decay_iters) == ("linear", 3, 10)
    assert config.deepspeed_builds_scheduler and not config.deepspeed_builds_optimizer


def test_cosine_scheduler_maps_min_lr_through_the_ratio(ds_json):
    ds = {"scheduler": {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 2, "cos_min_ratio": 0.1}}}
    t = merged(["--lr", "1e-3"], ds, ds_json).training
    assert t.lr_decay_style == "cosine" and t.min_lr == pytest.approx(1e-4)


def test_warmup_fraction_fills_warmup_steps(ds_json):
    ds = {"scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": 20}}}
    config = merged(["--lr-warmup-fraction", "0.1"], ds, ds_json)
    assert config.deepspeed_config["scheduler"]["params"]["warmup_num_steps"] == 2
    assert config.training.warmup_iters == 2


@pytest.mark.parametrize("flags, ds, message", [
    ([], {"scheduler": {"type": "WarmupLR"}}, "needs warmup_num_steps >= 1 (DeepSpeed's rule), but the warmup is 0"),
    (["--lr-warmup-iters", "2"], {"scheduler": {"type": "OneCycle", "params": {}}},
     "--lr-warmup-iters 2 has no effect with scheduler type OneCycle"),
    (["--min-lr", "1e-6", "--lr-warmup-iters", "1"], {"scheduler": {"type": "WarmupLR"}},
     "--min-lr 1e-06 has no effect with scheduler type WarmupLR"),
    (["--lr-warmup-fraction", "0.5"], {"scheduler": {"type": "WarmupDecayLR",
                                                     "params": {"warmup_num_steps": 3}}},
     "--lr-warmup-fraction 0.5 gives 5 warmup steps, contradicting scheduler.params.warmup_num_steps=3"),
    ([], {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
          "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 2, "warmup_max_lr": 2e-3}}},
     "optimizer.params.lr=0.001 and scheduler.params.warmup_max_lr=0.002 in {path} disagree; make them equal"),
])
def test_scheduler_contradictions(ds_json, flags, ds, message):
    with pytest.raises(ConfigError) as error:
        merged(flags, ds, ds_json)
    assert message.format(path=ds_json(ds)) in str(error.value)


def test_unknown_scheduler_without_schedule_flags_is_accepted(ds_json):
    ds = {"scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 1e-5, "cycle_max_lr": 1e-4}}}
    assert merged([], ds, ds_json).deepspeed_builds_scheduler


def test_contiguous_checkpointing_sizes_the_buffer_by_layers(ds_json):
    flags = ["--checkpoint-activations", "--partition-activations", "--contiguous-checkpointing"]
    block = merged(flags, {}, ds_json).deepspeed_config["activation_checkpointing"]
    assert block["contiguous_memory_optimization"] and block["number_checkpoints"] == 2


# --- reading the file --------------------------------------------------------------------------------
def test_invalid_json_names_file_line_and_column(ds_json, tiny_flags):
    path = ds_json('{\n  "zero_optimization": {"stage": 1},\n  "bf16": {enabled: true}\n}')
    with pytest.raises(ConfigError, match=re.escape(f"{path}:3:12: invalid JSON: Expecting property name")):
        parse_config(tiny_flags + ["--deepspeed_config", path])


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "a DeepSpeed config must be a JSON object, got list"),
    ('{"zero_optimization": {"stage": 1}, "zero_optimization": {"stage": 3}}',
     "key 'zero_optimization' appears twice in one JSON object; keep one"),
])
def test_malformed_json_files(ds_json, tiny_flags, content, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tiny_flags + ["--deepspeed_config", ds_json(content)])


def test_missing_json_file(tiny_flags, tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ConfigError, match=re.escape(f"cannot read DeepSpeed config {missing!r}: No such file")):
        parse_config(tiny_flags + ["--deepspeed_config", missing])
