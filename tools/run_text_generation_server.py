"""Serve a checkpoint of any layout over HTTP with an OpenAI-compatible /v1/completions endpoint.

    python tools/run_text_generation_server.py --load runs/ckpt --port 5000
    torchrun --nproc_per_node 2 tools/run_text_generation_server.py --load runs/ckpt --port 5000   # TP=2
    deepspeed --num_gpus 2 tools/run_text_generation_server.py --load runs/ckpt --port 5000

    curl -s localhost:5000/v1/completions -H 'Content-Type: application/json' \
        -d '{"prompt": "The for statement", "max_tokens": 30, "temperature": 0}'

Rank 0 serves; the other ranks (tensor-parallel ranks: TP = the number of processes) follow its requests.
Bad requests (empty prompt, negative max_tokens, a prompt longer than the context) get HTTP 400 with a message
and the server keeps serving. Ctrl-C (or SIGTERM) on the launcher stops every rank.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Followers wait in a broadcast between requests: the process groups must tolerate a long idle server.
IDLE_TIMEOUT_MINUTES = 7 * 24 * 60


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", required=True, help="a --save folder (its `latest`) or a global_stepN folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="weights and compute dtype")
    parser.add_argument("--model-name", default=None, help="the `model` reported in responses (default: --load)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="passed by the deepspeed launcher; the rank is read from the environment")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from megatron.core import comm
    from megatron.core import parallel_state as ps
    from megatron.inference import load_model_for_inference
    from megatron.inference.server import CompletionService, build_app, follow
    from megatron.inference.world import init_inference_world

    init_inference_world(timeout_minutes=IDLE_TIMEOUT_MINUTES)
    loaded = load_model_for_inference(args.load, args.dtype)
    try:
        if comm.get_rank() != 0:
            follow(loaded.model, loaded.tokenizer)
            return
        import uvicorn

        service = CompletionService(loaded.model, loaded.tokenizer, args.model_name or args.load)
        print(f"> serving {loaded.folder} (iteration {loaded.iteration}, TP={comm.get_world_size()}) on "
              f"http://{args.host}:{args.port}/v1/completions", flush=True)
        try:
            uvicorn.run(build_app(service), host=args.host, port=args.port, log_level="warning")
        finally:
            service.shutdown()
    finally:
        ps.destroy_model_parallel()
        comm.destroy_world()


if __name__ == "__main__":
    main()
