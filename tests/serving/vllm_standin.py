"""A stand-in for vLLM's OpenAI server with runtime LoRA loading, in front of a real Tuneloop demo app.

Matched against vLLM's ``docs/features/lora.md`` ("Dynamically serving LoRA Adapters") and
``vllm/entrypoints/openai/serving_models.py`` (``OpenAIServingModels``) plus ``api_server.py``:

- ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}``: 200 with the text
  ``Success: LoRA adapter 'NAME' added successfully.``; 400 ``InvalidUserInput`` when a field is missing
  or the name is already loaded; 404 ``NotFoundError`` ("No adapter found") when the path holds none.
- ``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` (or ``lora_int_id``): 200 text, 400 when neither
  is given, 404 ``NotFoundError`` when the name is not loaded.
- Both routes exist only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``; without it FastAPI answers 404
  ``{"detail": "Not Found"}`` (``runtime_lora=False`` here).
- ``GET /v1/models``: the base model (``parent`` null, ``root`` its path) then one card per adapter
  (``parent`` the base id, ``root`` the adapter path).

Stricter than vLLM on purpose: unknown request fields are refused (vLLM only logs them), so a typo in
Tuneloop's request fails a test instead of passing silently. Errors use vLLM's ``ErrorResponse`` shape.

Generation is proxied to the upstream Tuneloop app, rewriting the base model's id to ``base``. An adapter
is served only once loaded here (or listed in ``static_adapters``, like ``--lora-modules``); the upstream
app must already hold an adapter of that name to generate with it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

UPSTREAM_BASE = "base"  # a Tuneloop engine's name for its base model


@dataclass
class StandinState:
    base_id: str
    upstream: str  # the Tuneloop app, e.g. http://127.0.0.1:PORT
    runtime_lora: bool = True
    static_adapters: tuple[str, ...] = ()
    loaded: dict[str, str] = field(default_factory=dict)  # name -> lora_path
    requests: list[tuple[str, object]] = field(default_factory=list)  # (route, JSON body) as received


def _error(message: str, err_type: str, status: int) -> JSONResponse:
    return JSONResponse({"object": "error", "message": message, "type": err_type, "param": None, "code": status},
                        status_code=status)


async def _json_object(request: Request, route: str, state: StandinState, allowed: set[str]):
    try:
        body = await request.json()
    except ValueError:
        body = None
    state.requests.append((route, body))
    if not isinstance(body, dict):
        return None, _error("the request body must be a JSON object", "BadRequestError", 400)
    unknown = set(body) - allowed
    if unknown:
        return None, _error(f"unknown field(s): {sorted(unknown)}", "BadRequestError", 400)
    if any(not isinstance(v, (str, int)) for v in body.values()):
        return None, _error("fields must be strings", "BadRequestError", 400)
    return body, None


def create_standin(state: StandinState) -> FastAPI:
    app = FastAPI()
    app.state.standin = state

    if state.runtime_lora:  # vLLM registers these only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True

        @app.post("/v1/load_lora_adapter")
        async def load_lora_adapter(request: Request):
            body, error = await _json_object(request, "load_lora_adapter", state, {"lora_name", "lora_path"})
            if error:
                return error
            name, path = body.get("lora_name"), body.get("lora_path")
            if not name or not path:
                return _error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400)
            if name in state.loaded:
                return _error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400)
            if not (Path(path) / "adapter_config.json").is_file():
                return _error(f"Loading lora {name} failed: No adapter found for {path}", "NotFoundError", 404)
            state.loaded[name] = path
            return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

        @app.post("/v1/unload_lora_adapter")
        async def unload_lora_adapter(request: Request):
            body, error = await _json_object(request, "unload_lora_adapter", state, {"lora_name", "lora_int_id"})
            if error:
                return error
            name = body.get("lora_name")
            if not name and not body.get("lora_int_id"):
                return _error("either 'lora_name' and 'lora_int_id' needs to be provided.", "InvalidUserInput", 400)
            if name not in state.loaded:
                return _error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
            del state.loaded[name]
            return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.get("/v1/models")
    async def models():
        async with httpx.AsyncClient(base_url=state.upstream, timeout=30) as client:
            upstream = {m["id"]: m for m in (await client.get("/v1/models")).json()["data"]}
        created = int(time.time())
        cards = [{"id": state.base_id, "object": "model", "created": created, "owned_by": "vllm",
                  "root": upstream[UPSTREAM_BASE].get("root"), "parent": None, "max_model_len": 2048}]
        served = {n: upstream[n].get("root") for n in state.static_adapters if n in upstream}
        served.update(state.loaded)
        cards += [{"id": n, "object": "model", "created": created, "owned_by": "vllm", "root": p,
                   "parent": state.base_id} for n, p in served.items()]
        return {"object": "list", "data": cards}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await request.json()
        state.requests.append(("chat/completions", {k: v for k, v in body.items() if k != "messages"}))
        model = body.get("model")
        if model == state.base_id:
            body["model"] = UPSTREAM_BASE
        elif model not in state.loaded and model not in state.static_adapters:
            return _error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        client = httpx.AsyncClient(base_url=state.upstream, timeout=60)
        upstream = await client.send(client.build_request("POST", "/v1/chat/completions", json=body), stream=True)
        if upstream.status_code != 200 or not body.get("stream"):
            content = await upstream.aread()
            await upstream.aclose()
            await client.aclose()
            return Response(content, status_code=upstream.status_code, media_type="application/json")

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()
                await client.aclose()

        return StreamingResponse(relay(), media_type="text/event-stream")

    return app


@dataclass
class RunningStandin:
    url: str  # OpenAI base URL, ending in /v1
    state: StandinState
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_standin(state: StandinState, port: int) -> RunningStandin:
    """Serve the stand-in on 127.0.0.1:``port`` in a thread; returns once it accepts requests."""
    server = uvicorn.Server(uvicorn.Config(create_standin(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the vLLM stand-in did not start")
        time.sleep(0.05)
    return RunningStandin(f"http://127.0.0.1:{port}/v1", state, server, thread)
