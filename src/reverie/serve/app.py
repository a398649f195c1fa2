"""The FastAPI app of ``reverie serve``: OpenAI-compatible endpoints over reverie models.

``create_app(models, config)`` takes models already loaded (``load_models`` loads them from
bundled names or folders given at start; requests only ever *name* one of these, so nothing
from a request reaches the filesystem). Endpoints: ``GET /health``, ``GET /metrics``
(Prometheus text), ``GET /v1/models``, ``POST /v1/completions``, ``POST
/v1/chat/completions`` (masked-diffusion LMs through :func:`reverie.discrete.generate`:
dynamic batching, ``stream`` as server-sent events of committed text, ``response_format``
``json_schema`` and the ``regex`` extension decoded with DINGO, valid by construction) and
``POST /v1/images/generations`` (continuous models, base64 PNGs). Errors have OpenAI's body
``{"error": {"message", "type", "param", "code"}}``; 500 only for faults, logged with their
traceback. ``GET /`` is the playground page (:mod:`reverie.serve.playground`, its files under
``/static/``) and ``GET /v1/reverie/options`` what it may ask each model. See docs/serve.md.
(This module needs fastapi; ``import reverie`` never imports it.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from reverie.serve.batching import Batcher, Job, QueueFull, TextWork, run_text
from reverie.serve.images import image_work, run_images
from reverie.serve.metrics import Metrics
from reverie.serve.schemas import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    ImageRequest,
    TextReply,
    error_body,
    sse,
)

__all__ = ["APIError", "ServerConfig", "ServedModel", "create_app", "load_models", "model_loaders"]

log = logging.getLogger("reverie.serve")

#: Default sampler of text models (LLaDA's low-confidence remasking; ``tiny-json`` writes
#: valid JSON with it).
TEXT_SAMPLER = "low_confidence"


@dataclass
class ServerConfig:
    """Limits and settings (the ``reverie serve`` options)."""

    api_key: str | None = None
    max_batch: int = 32  # rows per model call
    max_queue: int = 256  # requests waiting
    timeout: float = 60.0  # seconds per request, arrival to last byte
    max_tokens: int = 256  # new tokens per row
    max_n: int = 16  # samples per request (text: per prompt)
    max_prompts: int = 16  # prompts per completions request
    max_body: int = 1 << 20  # request body bytes
    batch_wait: float = 0.02  # seconds the dispatcher waits for compatible requests


@dataclass
class ServedModel:
    """A model the server offers: ``kind`` is ``"text"`` (a token denoiser),
    ``"image"`` (a :class:`~reverie.hub.LoadedModel`) or ``"text-to-image"`` (a pipeline)."""

    id: str
    model: Any
    kind: str
    created: int

    def card(self) -> dict[str, Any]:
        return {"id": self.id, "object": "model", "created": self.created,
                "owned_by": "reverie", "kind": self.kind}


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def served(model_id: str, model: Any) -> ServedModel:
    """Classify a loaded model (``reverie.load``'s result) for serving."""
    from reverie.discrete import TokenDenoiserBase
    from reverie.hub import LoadedModel
    from reverie.pipelines import LatentPipeline

    now = int(time.time())
    if isinstance(model, TokenDenoiserBase):
        if hasattr(model, "generate_canvases"):
            raise ValueError(f"{model_id!r}: {type(model).__name__} has its own canvas loop "
                             "without max_new_tokens / stop / streaming; it cannot be served yet")
        if model.process.kind != "masked":
            raise ValueError(f"{model_id!r}: only masked-diffusion LMs can be served, this one's "
                             f"process is {type(model.process).__name__}")
        if getattr(model, "tokenizer", None) is None:
            raise ValueError(f"{model_id!r} has no tokenizer; the server speaks text")
        return ServedModel(model_id, model, "text", now)
    if isinstance(model, LatentPipeline):
        return ServedModel(model_id, model, "text-to-image", now)
    if isinstance(model, LoadedModel):
        return ServedModel(model_id, model, "image", now)
    raise ValueError(f"{model_id!r}: cannot serve a {type(model).__name__}")


def model_loaders(specs: list[str]) -> dict[str, Callable[[], Any]]:
    """``NAME``, ``FOLDER`` or ``ID=NAME|FOLDER`` specs, checked now (syntax, unique ids, a
    bundled name, an existing folder or a Hub id), as id -> a function that loads the model
    with :func:`reverie.load`; a model's id is ``ID``, else the bundled name or the folder's
    name."""
    from functools import partial
    from pathlib import Path

    from reverie.hub import check_model_name, load

    out: dict[str, Callable[[], Any]] = {}
    for spec in specs:
        model_id, sep, target = spec.partition("=")
        if not sep:
            target = spec
            model_id = Path(spec).name if Path(spec).expanduser().is_dir() else spec
        if not model_id or not target:
            raise ValueError(f"--model expects NAME, FOLDER or ID=NAME|FOLDER, got {spec!r}")
        if model_id in out:
            raise ValueError(f"two models have the id {model_id!r}; name them with ID=FOLDER")
        check_model_name(target)
        out[model_id] = partial(load, target)
    if not out:
        raise ValueError("no model to serve: pass --model NAME|FOLDER (repeatable)")
    return out


def load_models(specs: list[str]) -> dict[str, ServedModel]:
    """Load ``NAME``, ``FOLDER`` or ``ID=NAME|FOLDER`` specs (see :func:`model_loaders`) now."""
    return {k: served(k, load()) for k, load in model_loaders(specs).items()}


# ---------------------------------------------------------------------------------------------
# The ASGI guard: API key and body size
# ---------------------------------------------------------------------------------------------


def _open(path: str) -> bool:
    """Paths served without the API key: ``/health`` and the playground's page and files
    (they hold no data; the page asks for the key before it calls the API)."""
    return path in ("/health", "/") or path.startswith("/static/")


class Guard:
    """Pure ASGI middleware: with an API key, ``Authorization: Bearer KEY`` on every path
    but ``/health`` and the playground page (401); bodies over ``max_body`` bytes are refused
    (413) before the app sees them. The body it read is handed on unchanged."""

    def __init__(self, app: Any, api_key: str | None, max_body: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body = max_body

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.api_key is not None and not _open(scope.get("path", "")):
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                    token.strip().encode(), self.api_key.encode()):
                return await _send_error(send, 401, APIError(
                    401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                    code="invalid_api_key"))
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await _send_error(send, 413, _too_large(self.max_body))
        chunks, size = [], 0
        while True:  # read the body (bounded), then replay it
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await _send_error(send, 413, _too_large(self.max_body))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # e.g. http.disconnect

        await self.app(scope, replay, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"the request body is larger than {limit} bytes",
                    code="request_too_large")


async def _send_error(send: Any, status: int, err: APIError) -> None:
    body = json.dumps(error_body(err.message, err.type, err.param, err.code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------


def create_app(models: dict[str, ServedModel] | dict[str, Any],
               config: ServerConfig | None = None,
               loading: Mapping[str, Callable[[], Any]] | None = None) -> Any:
    """The FastAPI app serving ``models`` (id -> :class:`ServedModel`, or id -> a loaded
    model, classified by :func:`served`).

    ``loading`` (id -> a function that loads the model) are loaded one after the other in a
    background thread, so the server answers while they load: ``/health`` says
    ``"status": "loading"`` (HTTP 503) until every one is loaded or failed, and a request
    naming one gets 503 ``model_loading`` (``model_failed`` with the reason if it failed)."""
    cfg = config or ServerConfig()
    models = {k: m if isinstance(m, ServedModel) else served(k, m) for k, m in models.items()}
    metrics = Metrics()
    batcher = Batcher(max_batch=cfg.max_batch, max_queue=cfg.max_queue, wait=cfg.batch_wait,
                      metrics=metrics)
    state = _State(models, cfg, metrics, batcher)
    if loading:
        _load_in_background(state, dict(loading))

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPI(title="reverie", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.reverie = state

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> Any:
        return JSONResponse(error_body(err.message, err.type, err.param, err.code),
                            status_code=err.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, err: HTTPException) -> Any:
        message = "unknown path" if err.status_code == 404 else str(err.detail)
        return JSONResponse(error_body(f"{message}: {request.method} {request.url.path}",
                                       code=str(err.status_code)), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> Any:
        message, param = _describe(err.errors())
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(Exception)
    async def _fault(request: Request, err: Exception) -> Any:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=err)
        return JSONResponse(error_body("internal server error (logged by the server)",
                                       "server_error"), status_code=500)

    @app.get("/health")
    async def health() -> Any:
        body = {"status": "ok", "models": list(models), "queue": len(batcher.pending)}
        pending = [k for k, v in state.loading.items() if v is None]
        failed = {k: v for k, v in state.loading.items() if v is not None}
        if failed:
            body["failed"] = failed
        if pending:
            body.update(status="loading", loading=pending)
            return JSONResponse(body, status_code=503)
        return body

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [m.card() for m in models.values()]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict:
        return state.model(model_id, None).card()

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await state.text(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await state.text(request, chat=True)

    @app.post("/v1/images/generations")
    async def images(request: Request) -> Any:
        return await state.images(request)

    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    from reverie.serve.playground import STATIC, options

    @app.get("/")
    async def playground() -> Any:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/reverie/options")
    async def playground_options() -> dict:
        return options(models, cfg, TEXT_SAMPLER, _model_length)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    return Guard(app, cfg.api_key, cfg.max_body)


def _load_in_background(state: _State, loaders: dict[str, Callable[[], Any]]) -> None:
    """Load ``loaders`` one by one in a daemon thread, adding each to ``state.models``; a
    failure is logged with its traceback and kept in ``state.loading`` for the answers."""
    import threading

    state.loading.update(dict.fromkeys(loaders))

    def work() -> None:
        for model_id, load in loaders.items():
            try:
                state.models[model_id] = served(model_id, load())
            except Exception as err:  # noqa: BLE001 -- reported by /health and each request
                log.error("the model %r failed to load", model_id, exc_info=err)
                state.loading[model_id] = f"{type(err).__name__}: {err}"
                continue
            del state.loading[model_id]
            log.info("loaded the model %r (%s)", model_id, state.models[model_id].kind)

    threading.Thread(target=work, name="reverie-load", daemon=True).start()


def _describe(errors: list[dict]) -> tuple[str, str | None]:
    """One line and the parameter name from pydantic's errors."""
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "extra_forbidden":
        return f"unrecognized request argument: {param}", param
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON", None
    what = f"{param}: " if param else ""
    return f"invalid request: {what}{first.get('msg', 'invalid value')}", param


class _State:
    """The request handlers' shared state."""

    def __init__(self, models: dict[str, ServedModel], cfg: ServerConfig, metrics: Metrics,
                 batcher: Batcher) -> None:
        self.models = models
        self.cfg = cfg
        self.metrics = metrics
        self.batcher = batcher
        self.constraints: OrderedDict[tuple, Any] = OrderedDict()  # LRU of compiled ones
        #: models loading in the background: id -> None while loading, the error if it failed
        self.loading: dict[str, str | None] = {}

    def model(self, model_id: Any, kinds: tuple[str, ...] | None) -> ServedModel:
        m = self.models.get(model_id) if isinstance(model_id, str) else None
        if m is None and model_id in self.loading:
            failure = self.loading[model_id]
            if failure is None:
                raise APIError(503, f"the model {model_id!r} is still loading; retry in a "
                                    "moment (GET /health says when it is ready)", "model",
                               code="model_loading")
            raise APIError(503, f"the model {model_id!r} failed to load: {failure}", "model",
                           code="model_failed")
        if m is None:
            raise APIError(404, f"the model {model_id!r} does not exist; served: "
                                f"{', '.join(self.models)}", "model", code="model_not_found")
        if kinds is not None and m.kind not in kinds:
            raise APIError(400, f"the model {model_id!r} is a {m.kind} model; this endpoint "
                                f"serves {' / '.join(kinds)} models", "model",
                           code="model_not_supported")
        return m

    async def _parse(self, request: Any, schema: type) -> Any:
        from pydantic import ValidationError

        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise APIError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, f"the body must be a JSON object, got {type(body).__name__}")
        try:
            req = schema.model_validate(body)
        except ValidationError as err:
            message, param = _describe(err.errors())
            raise APIError(400, message, param) from None
        field = req.unsupported()
        if field is not None:
            raise APIError(400, f"{field}={getattr(req, field)!r} is not supported by reverie "
                                "(leave it out)", field)
        return req

    def _count(self, endpoint: str, model: str, status: int, t0: float) -> None:
        self.metrics.requests.labels(endpoint, model, str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)

    # --- text ---

    async def text(self, request: Any, chat: bool) -> Any:
        endpoint = "chat.completions" if chat else "completions"
        t0 = time.perf_counter()
        model_id = "?"
        try:
            req = await self._parse(request, ChatCompletionRequest if chat else CompletionRequest)
            model_id = req.model
            m = self.model(req.model, ("text",))
            job, prompt_tokens = await self._text_job(m, req, chat)
            self._submit(job)
        except APIError as err:
            self._count(endpoint, model_id if model_id in self.models else "?", err.status, t0)
            raise
        reply = TextReply(chat, m.id, req, prompt_tokens, job.rows)
        if req.stream:
            return self._stream(request, job, reply, endpoint, t0)
        try:
            result = await self._wait(request, job, t0)
        except APIError as err:
            self._count(endpoint, m.id, err.status, t0)
            raise
        self._count(endpoint, m.id, 200, t0)
        return reply.body(result)

    async def _text_job(self, m: ServedModel, req: Any, chat: bool) -> tuple[Job, int]:
        """The job of a text request (every check that does not need the model runs here,
        so a bad request never reaches a batch) and its prompt token count."""
        from reverie.discrete import SAMPLERS
        from reverie.discrete.generate import end_token_id

        cfg, model = self.cfg, m.model
        if req.n > cfg.max_n:
            raise APIError(400, f"n must be at most {cfg.max_n}, got {req.n}", "n")
        prompts = self._chat_prompt(model, req.messages) if chat else self._prompts(model, req)
        rows = len(prompts) * req.n
        most = max(cfg.max_n, cfg.max_batch)
        if rows > most:
            raise APIError(400, f"{len(prompts)} prompts x n={req.n} asks for {rows} samples; "
                                f"at most {most} per request", "n")
        limit = _model_length(model)
        longest = max(len(p) for p in prompts)
        room = None if limit is None else limit - longest
        if room is not None and room < 1:
            raise APIError(400, f"the prompt has {longest} tokens, which fills this model's "
                                f"context of {limit}", "messages" if chat else "prompt")
        asked = (req.max_completion_tokens or req.max_tokens) if chat else req.max_tokens
        param = "max_completion_tokens" if chat and req.max_completion_tokens else "max_tokens"
        if asked is None:  # OpenAI: 16 for completions; chat: what fits
            asked = min(16 if not chat else cfg.max_tokens, room or cfg.max_tokens)
        if asked > cfg.max_tokens:
            raise APIError(400, f"{param} must be at most {cfg.max_tokens}, got {asked}", param)
        if room is not None and asked > room:
            raise APIError(400, f"{param}={asked} does not fit: the prompt has {longest} tokens "
                                f"and this model's context is {limit}", param)
        sampler = req.sampler or TEXT_SAMPLER
        info = SAMPLERS[sampler] if sampler in SAMPLERS else None
        if info is None or "masked" not in info.processes:
            names = [k for k in SAMPLERS if "masked" in SAMPLERS[k].processes]
            raise APIError(400, f"unknown sampler {sampler!r}; expected one of "
                                f"{', '.join(names)}", "sampler")
        sampler = info.name
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > 4 or any(not s or len(s) > 100 for s in stops):
            raise APIError(400, "stop takes up to 4 non-empty strings of at most 100 characters",
                           "stop")
        if info.revises and (req.stream or stops):
            raise APIError(400, f"sampler {sampler!r} revises decided tokens, so it cannot "
                                "stream or stop at a string", "sampler")
        constraint = await self._constraint(model, req, asked, info)
        seed = req.seed if req.seed is not None else secrets.randbits(62)
        temperature = 1.0 if req.temperature is None else float(req.temperature)
        work = TextWork(
            model=model, prompts=[p for p in prompts for _ in range(req.n)],
            seeds=[(seed + k) % 2**63 for k in range(rows)], max_new_tokens=asked,
            sampler=sampler, steps=req.steps, temperature=temperature, stop=stops,
            constraint=constraint, eos_id=None if info.revises else end_token_id(model),
            metrics=self.metrics,
        )
        # requests with equal keys share a generate call (ragged prompts are fine)
        # (the constraint is not part of the key: generate takes one per row)
        key = (m.id, "text", sampler, req.steps, temperature, asked, tuple(stops))
        if info.nfe_per_step > 1:  # such samplers cannot take left padding: equal prompts only
            key += (tuple(len(p) for p in prompts),)
        job = Job(key=key, rows=rows, work=work, runner=run_text, stream=req.stream)
        return job, sum(len(p) for p in prompts)

    def _prompts(self, model: Any, req: CompletionRequest) -> list[Any]:
        p = req.prompt
        items = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else list(p)
        if not items:
            raise APIError(400, "prompt is an empty list", "prompt")
        if len(items) > self.cfg.max_prompts:
            raise APIError(400, f"at most {self.cfg.max_prompts} prompts per request, got "
                                f"{len(items)}", "prompt")
        return [self._ids(model, item, "prompt") for item in items]

    def _chat_prompt(self, model: Any, messages: list[Any]) -> list[Any]:
        """The conversation's token ids: through the tokenizer's chat template when it has
        one, else the messages' texts concatenated (e.g. ``tiny-json``)."""
        tok = model.tokenizer
        if getattr(tok, "chat_template", None):
            from reverie.discrete.generate import _chat_prompts

            conv = [{"role": msg.role, "content": msg.text()} for msg in messages]
            try:
                ids = _chat_prompts(model, [conv])[0]
            except Exception as err:  # the template refused the conversation
                raise APIError(400, f"the chat template failed: {err}", "messages") from None
            return [self._ids(model, ids, "messages")]
        return [self._ids(model, "".join(msg.text() for msg in messages), "messages")]

    def _ids(self, model: Any, prompt: str | list[int], param: str) -> Any:
        from reverie.discrete.generate import _prompt_ids

        try:
            ids = model.encode(prompt) if isinstance(prompt, str) else prompt
            return _prompt_ids(model, ids, 1)
        except (ValueError, TypeError) as err:
            raise APIError(400, f"{param}: {err}", param) from None

    async def _constraint(self, model: Any, req: Any, n_new: int, info: Any) -> tuple[Any, Any]:
        """The constraint of ``response_format`` / ``regex`` / ``grammar`` (compiled once,
        kept in an LRU), checked to fit ``n_new`` tokens."""
        fmt = req.response_format
        if fmt is not None and fmt.type == "json_object":
            raise APIError(400, "response_format json_object is not supported; pass "
                                "{'type': 'json_schema', 'json_schema': {'schema': ...}}",
                           "response_format")
        schema = fmt.json_schema if fmt is not None and fmt.type == "json_schema" else None
        if fmt is not None and fmt.type == "json_schema" and schema is None:
            raise APIError(400, "response_format json_schema needs a json_schema object",
                           "response_format")
        given = [k for k, v in (("response_format", schema), ("regex", req.regex),
                                ("grammar", req.grammar)) if v is not None]
        if len(given) > 1:
            raise APIError(400, f"pass one of response_format json_schema, regex or grammar, "
                                f"not {' and '.join(given)}", given[1])
        if not given:
            return None
        if info.revises:
            raise APIError(400, f"sampler {info.name!r} revises decided tokens and cannot "
                                "decode under a constraint", "sampler")
        if schema is not None:
            key = ("schema", json.dumps(schema.schema_))  # key order kept: it orders the output
        else:
            key = ("regex", req.regex) if req.regex is not None else ("grammar", req.grammar)
        param = given[0]
        try:
            constraint = await self.batcher.call(self._compile, model, key, n_new)
        except APIError:
            raise
        except (ValueError, TypeError, RecursionError) as err:
            raise APIError(400, f"{param}: {err}", param) from None
        return constraint

    def _compile(self, model: Any, key: tuple, n_new: int) -> Any:
        """(model thread) The constraint object of ``key``, checked against ``n_new``."""
        from reverie.discrete.constraints import Grammar, JsonSchema, Regex, prepare_constraint

        constraint = self.constraints.get(key)
        if constraint is None:
            kind, text = key
            constraint = {"schema": JsonSchema, "regex": Regex, "grammar": Grammar}[kind](text)
            self.constraints[key] = constraint
            while len(self.constraints) > 64:
                self.constraints.popitem(last=False)
        self.constraints.move_to_end(key)
        if isinstance(constraint, Grammar):  # fits the canvas? (the chart is kept)
            constraint.check_length(model, n_new)
        else:
            prepare_constraint(model, constraint, n_new)  # (the automaton is cached)
        return constraint

    # --- queue, waiting, streaming ---

    def _submit(self, job: Job) -> None:
        try:
            self.batcher.submit(job)
        except QueueFull as err:
            raise APIError(429, str(err), type="rate_limit_error", code="queue_full") from None

    def _failure(self, err: BaseException) -> APIError:
        """The API error for an exception raised by a model call."""
        if isinstance(err, APIError):
            return err
        if isinstance(err, (ValueError, TypeError)):  # input only the model call could check
            return APIError(400, str(err))
        log.error("model call failed", exc_info=err)
        return APIError(500, "internal server error (logged by the server)", type="server_error")

    async def _wait(self, request: Any, job: Job, t0: float) -> Any:
        """The job's result, unless the client leaves (499, its job is cancelled) or the
        time runs out (504)."""
        result = asyncio.ensure_future(job.result())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({result, gone}, timeout=self._left(t0),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if result in done:
            try:
                return result.result()
            except Exception as err:
                raise self._failure(err) from None
        result.cancel()
        self.batcher.cancel(job)
        if gone in done:
            raise APIError(499, "the client closed the connection", code="client_closed")
        raise self._timeout()

    def _left(self, t0: float) -> float:
        return max(0.0, self.cfg.timeout - (time.perf_counter() - t0))

    def _timeout(self) -> APIError:
        return APIError(504, f"the request took longer than the server's timeout "
                             f"({self.cfg.timeout:g} s)", type="timeout_error", code="timeout")

    def _stream(self, request: Any, job: Job, reply: TextReply, endpoint: str,
                t0: float) -> Any:
        async def events() -> AsyncIterator[str]:
            status = 499  # unless the stream ends
            try:
                yield sse(reply.first())
                while True:
                    try:
                        event = await asyncio.wait_for(job.events.get(), self._left(t0))
                    except asyncio.TimeoutError:
                        err = self._timeout()
                        status = err.status
                        yield sse(error_body(err.message, err.type, None, err.code))
                        break
                    if event[0] == "piece":
                        yield sse(reply.chunk(event[1], event[2]))
                    elif event[0] == "done":
                        for chunk in reply.last(event[1]):
                            yield sse(chunk)
                        status = 200
                        break
                    else:
                        err = self._failure(event[1])
                        status = err.status
                        yield sse(error_body(err.message, err.type, err.param, err.code))
                        break
                yield "data: [DONE]\n\n"
            finally:  # also when the client disconnected (the generator is closed)
                if status != 200:
                    self.batcher.cancel(job)
                self._count(endpoint, reply.model, status, t0)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # --- images ---

    async def images(self, request: Any) -> Any:
        endpoint = "images.generations"
        t0 = time.perf_counter()
        model_id = "?"
        try:
            req = await self._parse(request, ImageRequest)
            model_id = req.model
            m = self.model(req.model, ("image", "text-to-image"))
            work = image_work(m.id, m.kind, m.model, req, self.cfg.max_n)
            job = Job(key=("image", uuid.uuid4().hex), rows=req.n, work=work, runner=run_images)
            self._submit(job)
            data = await self._wait(request, job, t0)
        except APIError as err:
            self._count(endpoint, model_id if model_id in self.models else "?", err.status, t0)
            raise
        self._count(endpoint, m.id, 200, t0)
        return {"created": int(time.time()), "data": data}


def _model_length(model: Any) -> int | None:
    """The longest canvas ``model`` takes (its ``length``, or its config's
    ``max_position_embeddings``), ``None`` when unknown."""
    limit = getattr(model, "length", None)
    if limit is None:
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return limit if isinstance(limit, int) else None


async def _disconnected(request: Any) -> None:
    """Returns when the client has closed the connection (the body was read already, so the
    next ASGI message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
