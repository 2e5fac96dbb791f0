"""The README's main job (examples_deepspeed/pretrain_gpt_cpu.sh) saves its model and ends by printing greedy and
sampled samples with tools/generate_text.py: its command lines must parse with the tool's own parser and load
the folder the job saves to. (The tool itself is tested on real checkpoints in test_generation.py.)"""

import os
import shlex

from tests.inference.runs import REPO, load_tool


def _script():
    with open(os.path.join(REPO, "examples_deepspeed", "pretrain_gpt_cpu.sh")) as handle:
        return handle.read()


def test_main_job_saves_and_samples_greedy_and_sampled():
    text = _script()
    assert '--save "$RUN_DIR/checkpoints"' in text
    prompts = next(line for line in text.splitlines() if line.startswith("PROMPTS=("))
    prompt_args = shlex.split(prompts[len("PROMPTS=("):-1])
    commands = [command for command in text.replace("\\\n", " ").splitlines()
                if command.startswith("python tools/generate_text.py")]
    assert len(commands) == 2
    tool = load_tool("tools/generate_text.py")
    parsed = []
    for command in commands:
        argv = shlex.split(command.replace('"${PROMPTS[@]}"', shlex.join(prompt_args)))[2:]
        args = tool.parse_args([arg.replace("$RUN_DIR", "runs/x") for arg in argv])
        assert args.load == "runs/x/checkpoints" and len(args.prompt) == 3
        parsed.append(tool.sampling_params(args))
    assert parsed[0].greedy and not parsed[1].greedy and parsed[1].temperature == 0.8
