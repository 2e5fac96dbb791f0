"""An OpenAI-compatible ``/v1/completions`` endpoint over the tensor-parallel model (FastAPI + uvicorn).

Rank 0 serves HTTP; every other rank follows: for each accepted request rank 0 broadcasts it (a small dict)
and all ranks run the same generation, so the TP collectives line up. One request is generated at a time
(a lock); requests are checked on rank 0 before anything is broadcast, so a bad one is answered with a 4xx and
never reaches the other ranks. ``None`` broadcast tells the followers to stop.

Request fields (OpenAI's): prompt (string or list of strings), max_tokens (default 16), temperature (default
1.0; 0 means greedy), top_p, stop (string or list), stream, seed; plus top_k (0: all). The response is OpenAI's
``text_completion`` object; each choice also carries ``token_ids`` (the generated ids).
"""

import dataclasses
import json
import queue
import threading
import time
import uuid
from typing import List, Optional, Union

from megatron.core import comm
from megatron.inference.generate import check_request
from megatron.inference.sampling import SamplingParams
from megatron.inference.text import generate_text

DEFAULT_MAX_TOKENS = 16  # OpenAI's default


class BadRequest(ValueError):
    """A request the server refuses (HTTP 400), with the reason."""


def parse_completion_request(body: dict, model, tokenizer) -> dict:
    """The canonical request every rank runs, or BadRequest naming what is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    known = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "n",
             "user", "logprobs", "echo", "presence_penalty", "frequency_penalty"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise BadRequest(f"unknown field(s) {unknown}; supported: {sorted(known)}")
    for name, default in (("n", 1), ("echo", False), ("presence_penalty", 0), ("frequency_penalty", 0)):
        if body.get(name) is not None and body[name] != default:
            raise BadRequest(f"{name}={body[name]!r} is not supported by this server (only {name}={default!r})")
    if body.get("logprobs") is not None:
        raise BadRequest("logprobs are not supported by this server; leave the field out")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompt must be a non-empty string or a non-empty list of strings")
    if any(p == "" for p in prompts):
        raise BadRequest("prompt is empty; give at least one character of text")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
        raise BadRequest(f"max_tokens must be an integer >= 0, got {max_tokens!r}")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings")
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise BadRequest(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    greedy = temperature == 0
    seed = body.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise BadRequest(f"seed must be an integer, got {seed!r}")
    try:
        params = SamplingParams(greedy=greedy, temperature=float(temperature) if not greedy else 1.0,
                                top_k=body.get("top_k", 0) or 0, top_p=float(body.get("top_p", 1.0)),
                                seed=seed if seed is not None else int(time.time_ns() % 2 ** 31))
        check_request(model, [tokenizer.tokenize(p) for p in prompts], max_tokens)
    except (TypeError, ValueError) as error:
        raise BadRequest(str(error)) from None
    return {"prompts": prompts, "max_tokens": max_tokens, "stop": stop, "params": dataclasses.asdict(params),
            "stream": bool(body.get("stream", False))}


def run_request(model, tokenizer, request: dict, on_update=None):
    """Generation for a canonical request; every rank calls it with the same request."""
    return generate_text(model, tokenizer, request["prompts"], request["max_tokens"],
                         SamplingParams(**request["params"]), stop=request["stop"], on_update=on_update)


def follow(model, tokenizer):
    """Ranks other than 0: run every broadcast request until rank 0 broadcasts None."""
    while True:
        request = comm.broadcast_object(None, src=0)
        if request is None:
            return
        try:
            run_request(model, tokenizer, request)
        except ValueError:
            pass  # rank 0 raised the same error and answers it


def _finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"   # OpenAI: an EOD or a stop string both mean "stop"


class CompletionService:
    """Rank 0's side: owns the lock, broadcasts requests, shapes OpenAI responses."""

    def __init__(self, model, tokenizer, model_name: str):
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.lock = threading.Lock()
        self.multi_rank = comm.get_world_size() > 1

    def _run(self, request: dict, on_update=None):
        with self.lock:
            if self.multi_rank:
                comm.broadcast_object(request, src=0)
            return run_request(self.model, self.tokenizer, request, on_update)

    def shutdown(self):
        """Tell the followers to stop. Best effort: a launcher that forwarded the stop signal to every rank
        has already ended them, and then there is nobody to tell."""
        with self.lock:
            if self.multi_rank:
                try:
                    comm.broadcast_object(None, src=0)
                except Exception:  # noqa: BLE001 - the followers are gone
                    pass

    def _envelope(self, choices: List[dict], usage: Optional[dict] = None) -> dict:
        response = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                    "model": self.model_name, "choices": choices}
        if usage is not None:
            response["usage"] = usage
        return response

    def complete(self, request: dict) -> dict:
        completions = self._run(request)
        choices = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": _finish_reason(c.finish_reason),
                    "token_ids": c.token_ids} for i, c in enumerate(completions)]
        prompt_tokens = sum(len(self.tokenizer.tokenize(p)) for p in request["prompts"])
        completion_tokens = sum(len(c.token_ids) for c in completions)
        return self._envelope(choices, {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                        "total_tokens": prompt_tokens + completion_tokens})

    def stream(self, request: dict):
        """Server-sent events: a chunk per new piece of text of each prompt, a last chunk with the finish
        reason, then ``data: [DONE]`` (OpenAI's stream format)."""
        events: "queue.Queue" = queue.Queue()
        sent = [""] * len(request["prompts"])

        def deltas(completions, final):
            for index, completion in enumerate(completions):
                text = completion.text
                # A prefix of ids can decode to text that the longer sequence decodes differently (a
                # multi-byte character cut in two): send only what extends what was sent.
                if text.startswith(sent[index]) and len(text) > len(sent[index]):
                    events.put(self._envelope([{"index": index, "text": text[len(sent[index]):], "logprobs": None,
                                                "finish_reason": None}]))
                    sent[index] = text
                if final:
                    events.put(self._envelope([{"index": index, "text": "", "logprobs": None,
                                                "finish_reason": _finish_reason(completion.finish_reason),
                                                "token_ids": completion.token_ids}]))

        def produce():
            try:
                deltas(self._run(request, on_update=lambda completions: deltas(completions, False)), True)
            except Exception as error:  # noqa: BLE001 - reported in the stream, the server keeps serving
                events.put({"error": {"message": str(error), "type": type(error).__name__}})
            events.put(None)

        threading.Thread(target=produce, daemon=True).start()
        while True:
            event = events.get()
            if event is None:
                yield "data: [DONE]\n\n"
                return
            yield f"data: {json.dumps(event)}\n\n"


def build_app(service: CompletionService):
    """The FastAPI application: POST /v1/completions, GET /v1/models, GET /health."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse

    app = FastAPI(title="megatron-ds text generation")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": "invalid_request_error",
                                                                   "code": status}})

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "owned_by": "megatron-ds"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error(400, "the request body is not valid JSON")
        try:
            parsed = parse_completion_request(body, service.model, service.tokenizer)
        except BadRequest as bad:
            return error(400, str(bad))
        if parsed["stream"]:
            return StreamingResponse(service.stream(parsed), media_type="text/event-stream")
        from starlette.concurrency import run_in_threadpool

        try:
            return await run_in_threadpool(service.complete, parsed)
        except ValueError as failed:
            return error(400, str(failed))

    return app
