"""The completion server under the real launchers training uses (torchrun and the `deepspeed` launcher, 2 ranks:
TP=2 over a TP=2 checkpoint), queried with a real HTTP client: greedy completions equal generate_text.py's,
streaming gives the same text, bad requests get HTTP 400 with a message, and the server keeps serving after
them."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.distributed import run_on_ranks
from tests.inference.runs import REPO, load_tool, trained_checkpoint

PROMPTS = ["The for statement", "If"]


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cli_greedy(load_dir, prompts, max_new_tokens):
    argv = ["--load", load_dir, "--max-new-tokens", str(max_new_tokens), "--greedy"]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    completions = load_tool("tools/generate_text.py").main(argv, printer=lambda line: None)
    return [completion.as_dict() for completion in completions]


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"],
    "deepspeed": ["deepspeed", "--num_gpus", "2", "--master_port"],
}


def start_server(launcher, english_corpus, tmp_path_factory, tmp_path):
    save_dir, _ = trained_checkpoint("llama_gqa_tp2", english_corpus, tmp_path_factory)
    port = _free_port()
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log = open(tmp_path / "server.log", "w")
    command = LAUNCHERS[launcher] + [str(_free_port()), "tools/run_text_generation_server.py", "--load", save_dir,
                                     "--port", str(port)]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise AssertionError(f"server did not start:\n{open(tmp_path / 'server.log').read()[-4000:]}")
        time.sleep(0.5)
    return base, save_dir, process, log


def stop_server(process, log) -> bool:
    """Ctrl-C to the launcher's process group (started above); whether every rank stopped by itself."""
    stopped = True
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stopped = False
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log.close()
    return stopped


@pytest.fixture
def server(english_corpus, tmp_path_factory, tmp_path):
    base, save_dir, process, log = start_server("torchrun", english_corpus, tmp_path_factory, tmp_path)
    yield base, save_dir, process
    stop_server(process, log)


def test_server_answers_refuses_and_survives(server):
    base, save_dir, process = server
    client = httpx.Client(base_url=base, timeout=120)
    expected = run_on_ranks(1, _cli_greedy, load_dir=save_dir, prompts=PROMPTS, max_new_tokens=12)[0]

    answer = client.post("/v1/completions", json={"prompt": PROMPTS, "max_tokens": 12, "temperature": 0})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "text_completion" and body["usage"]["completion_tokens"] > 0
    assert [c["text"] for c in body["choices"]] == [e["text"] for e in expected]
    assert [c["token_ids"] for c in body["choices"]] == [e["token_ids"] for e in expected]

    for bad, message in [({"prompt": "", "max_tokens": 5}, "prompt is empty"),
                         ({"prompt": "x", "max_tokens": -1}, "max_tokens must be an integer >= 0"),
                         ({"prompt": "word " * 80, "max_tokens": 5}, "exceeds the model's context of 64"),
                         ({"prompt": "x", "temperature": -1}, "temperature must be a number >= 0"),
                         ({"max_tokens": 3}, "prompt must be a non-empty string")]:
        refused = client.post("/v1/completions", json=bad)
        assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
    assert client.post("/v1/completions", content=b"{not json").status_code == 400

    chunks = []
    with client.stream("POST", "/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 12, "temperature": 0,
                                                         "stream": True}) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data: "):
                chunks.append(line[len("data: "):])
    assert chunks[-1] == "[DONE]"
    events = [json.loads(chunk) for chunk in chunks[:-1]]
    assert "".join(e["choices"][0]["text"] for e in events) == expected[0]["text"]
    assert events[-1]["choices"][0]["finish_reason"] in ("length", "stop")

    again = client.post("/v1/completions", json={"prompt": PROMPTS[1], "max_tokens": 12, "temperature": 0})
    assert again.status_code == 200 and again.json()["choices"][0]["text"] == expected[1]["text"]
    assert process.poll() is None, "the server stopped"


def test_server_under_the_deepspeed_launcher(english_corpus, tmp_path_factory, tmp_path):
    base, save_dir, process, log = start_server("deepspeed", english_corpus, tmp_path_factory, tmp_path)
    try:
        expected = run_on_ranks(1, _cli_greedy, load_dir=save_dir, prompts=PROMPTS[:1], max_new_tokens=8)[0]
        client = httpx.Client(base_url=base, timeout=120)
        refused = client.post("/v1/completions", json={"prompt": "", "max_tokens": 4})
        assert refused.status_code == 400 and "prompt is empty" in refused.text
        answer = client.post("/v1/completions", json={"prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["token_ids"] == expected[0]["token_ids"]
    finally:
        stopped = stop_server(process, log)
    assert stopped, f"Ctrl-C did not stop the server:\n{open(tmp_path / 'server.log').read()[-4000:]}"
