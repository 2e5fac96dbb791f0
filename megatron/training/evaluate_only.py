"""--skip-train (--eval-only): score a saved checkpoint on the validation data and print loss and perplexity.

The engine, data and checkpoint loading are training's own, so the figure is the one training's validation
logged at that iteration (the same batches: every evaluation starts from the first validation sample), given
the same data flags and layout; another layout loads through --universal-checkpoint and agrees within float
reduction order.
"""

from megatron.training.loop import evaluate


def evaluate_checkpoint(engine, data, resumed, config, progress, printer) -> float:
    """The validation loss of the loaded checkpoint (recorded in ``progress`` at its iteration)."""
    load = config.checkpoint.load
    if resumed is None:
        raise ValueError(f"--skip-train: {load} holds no checkpoint (no `latest` file); point --load at the folder "
                         f"training saved to")
    if data.valid_batches is None:
        raise ValueError("--skip-train: the validation split is empty; give --split with a validation share (e.g. "
                         "98,2,0, or 0,1,0 to score all of --data-path) or --valid-data-path")
    batches = config.training.eval_iters * engine.gradient_accumulation_steps()
    loss = evaluate(engine, data.valid_batches(), batches)
    progress.record_eval(resumed.iteration, loss)
    printer(f"> evaluation only: checkpoint {resumed.folder} (iteration {resumed.iteration}), {batches} micro-batches "
            f"of the validation data: loss {loss:.8f} | ppl {progress.history[-1]['eval_ppl']:.6f}")
    return loss
