"""``reverie serve``: the real server in a subprocess on a free loopback port, reached with the
official ``openai`` client (completions, chat, streaming, json_schema, images) and raw httpx
(errors, 429, timeouts, a client leaving mid-stream); the app in-process for a model call
that raises and a hypothesis fuzz of request bodies (never a 500)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

SRC = Path(__file__).resolve().parents[1] / "src"
KEY = "sk-test-key"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m reverie serve ARGS`` on a free loopback port."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reverie", "serve", "--port", str(self.port), "--threads",
             "1", "--log-level", "warning", *args],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def servers():
    """The main server (all bundled models, an API key) and a small one (one row per batch,
    one waiting request, 0.5 s timeout), started side by side."""
    main = Server("--model", "tiny-json", "--model", "digits", "--model", "shapes", "--model",
                  "two-moons", "--api-key", KEY, "--max-body", "65536")
    small = Server("--model", "tiny-json", "--max-batch", "1", "--max-queue", "1",
                   "--timeout", "0.5")
    try:
        main.wait_ready()
        small.wait_ready()
        yield main, small
    finally:
        main.stop()
        small.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def _auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def _metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", headers=_auth()).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _is_error_body(body: dict) -> bool:
    return set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}


# ---------------------------------------------------------------------------------------------
# openai client
# ---------------------------------------------------------------------------------------------


def test_models_and_health(server, client):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # no key needed
    ids = {m.id for m in client.models.list().data}
    assert ids == {"tiny-json", "digits", "shapes", "two-moons"}


def test_completions(client):
    kw = dict(model="tiny-json", prompt=['{"name":', "{"], max_tokens=20, n=2, seed=3)
    out = client.completions.create(**kw)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for c in out.choices:
        assert isinstance(c.text, str) and c.finish_reason in ("stop", "length")
        assert (len(c.text) == 20) == (c.finish_reason == "length")  # one char per token
    assert out.usage.prompt_tokens == len('{"name":') + 1
    assert out.usage.completion_tokens == sum(len(c.text) for c in out.choices)
    again = client.completions.create(**kw)
    assert [c.text for c in again.choices] == [c.text for c in out.choices]  # seeded
    other = client.completions.create(**{**kw, "seed": 4})
    assert [c.text for c in other.choices] != [c.text for c in out.choices]  # the seed matters


def test_row_does_not_depend_on_its_batch(server, client):
    """A request's text is the same alone and inside a batch with ragged prompts."""
    kw = dict(model="tiny-json", max_tokens=24, seed=11)
    alone = client.completions.create(prompt='{"name":', **kw).choices[0].text
    before = _metric(server.url, "reverie_batch_requests_sum")
    calls = _metric(server.url, "reverie_batch_requests_count")
    prompts = ['{"name":', "{", '{"age":3', "", '{"n']
    with ThreadPoolExecutor(len(prompts)) as pool:
        outs = list(pool.map(lambda p: client.completions.create(prompt=p, **kw), prompts))
    assert outs[0].choices[0].text == alone
    # the five requests shared fewer than five model calls (they were batched)
    assert _metric(server.url, "reverie_batch_requests_sum") - before == len(prompts)
    assert _metric(server.url, "reverie_batch_requests_count") - calls < len(prompts)


def test_chat_and_stream(client):
    kw = dict(model="tiny-json", messages=[{"role": "user", "content": '{"name":'}],
              max_tokens=24, seed=7)
    full = client.chat.completions.create(**kw).choices[0].message
    assert full.role == "assistant" and isinstance(full.content, str)
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    texts = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-json", prompt='{"name":', max_tokens=24, seed=7, stream=True))
    assert texts == full.content  # chat without a template: the messages' text as prompt


def test_json_schema_output_is_valid(client):
    validator = jsonschema.Draft202012Validator(PERSON)
    assert not validator.is_valid({"name": "Ann", "age": "3"})  # the check can fail
    assert not validator.is_valid({"name": "Annabelle", "age": 3})
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    out = client.chat.completions.create(
        model="tiny-json", messages=[{"role": "user", "content": ""}], max_tokens=40, n=3,
        seed=0, response_format=fmt)
    for choice in out.choices:
        validator.validate(json.loads(choice.message.content))
    stream = client.chat.completions.create(
        model="tiny-json", messages=[{"role": "user", "content": ""}], max_tokens=40, n=2,
        seed=5, response_format=fmt, stream=True)
    texts = ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    for text in texts:
        validator.validate(json.loads(text))


def test_regex_extension(client):
    pattern = "[0-9]{3}-[a-z]{2}"
    assert re.fullmatch(pattern, "12-ab") is None  # the check can fail
    out = client.completions.create(model="tiny-json", prompt="", max_tokens=10, n=2, seed=1,
                                    extra_body={"regex": pattern, "steps": 10})
    for c in out.choices:
        assert re.fullmatch(pattern, c.text), c.text


def test_grammar_extension_and_mixed_constraints_share_a_batch(server, client):
    """Requests with a schema, a regex, a grammar and none share model calls; each answer is
    the one it gets alone and meets its own constraint."""
    from reverie.discrete.constraints import Grammar

    parens = 'start: "(" start ")" start | "x" start |'
    assert not Grammar(parens).matches("(x")  # the check can fail
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    asks = [dict(response_format=fmt), dict(extra_body={"regex": "[0-9]{3}-[a-z]{2}"}),
            dict(extra_body={"grammar": parens}), {}]

    def ask(extra):
        return client.chat.completions.create(
            model="tiny-json", messages=[{"role": "user", "content": ""}], max_tokens=20,
            seed=3, **extra).choices[0].message.content

    alone = [ask(a) for a in asks]
    calls = _metric(server.url, "reverie_batch_requests_count")
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(ask, asks))
    assert together == alone
    assert _metric(server.url, "reverie_batch_requests_count") - calls < len(asks)
    jsonschema.Draft202012Validator(PERSON).validate(json.loads(together[0]))
    assert re.fullmatch("[0-9]{3}-[a-z]{2}", together[1])
    assert Grammar(parens).matches(together[2])


def test_images(client):
    from PIL import Image

    out = client.images.generate(model="digits", prompt="7", n=2,
                                 extra_body={"steps": 4, "seed": 0})
    for item in out.data:
        im = Image.open(io.BytesIO(base64.b64decode(item.b64_json)))
        assert im.size == (8, 8) and im.mode == "L"
    out = client.images.generate(model="shapes", prompt="a red circle on the left",
                                 extra_body={"steps": 4, "guidance_scale": 1.5})
    im = Image.open(io.BytesIO(base64.b64decode(out.data[0].b64_json)))
    assert im.size == (32, 32) and im.mode == "RGB"
    out = client.images.generate(model="two-moons", prompt="", n=3, extra_body={"steps": 4})
    assert [len(d.model_extra["sample"]) for d in out.data] == [2, 2, 2]


# ---------------------------------------------------------------------------------------------
# errors (raw HTTP)
# ---------------------------------------------------------------------------------------------


def test_errors(server):
    url = server.url + "/v1/completions"
    body = {"model": "tiny-json", "prompt": "{", "max_tokens": 4}
    assert httpx.post(url, json=body, headers=_auth()).status_code == 200
    cases = [
        (401, {}, body),  # no key
        (401, {"Authorization": "Bearer wrong"}, body),
        (404, _auth(), {**body, "model": "no-such-model"}),
        (404, _auth(), {**body, "model": "/etc/passwd"}),  # a path is just an unknown name
        (400, _auth(), {**body, "n": 17}),
        (400, _auth(), {**body, "max_tokens": 100}),  # more than the 64-token canvas
        (400, _auth(), {**body, "prompt": "<>"}),  # not in the alphabet
        (400, _auth(), {**body, "sampler": "nope"}),
        (400, _auth(), {**body, "top_p": 0.5}),  # not implemented: refused, not ignored
        (400, _auth(), {**body, "frobnicate": 1}),
        (400, _auth(), {**body, "regex": "("}),
        (400, _auth(), {**body, "model": "digits"}),
    ]
    for status, headers, payload in cases:
        r = httpx.post(url, json=payload, headers=headers)
        assert r.status_code == status, (payload, r.text)
        assert _is_error_body(r.json()), r.text
    assert httpx.get(server.url + "/v1/models").status_code == 401
    r = httpx.post(url, content=b"{not json", headers=_auth())
    assert r.status_code == 400 and _is_error_body(r.json())
    r = httpx.post(url, content=b"x" * 70_000, headers=_auth())  # --max-body 65536
    assert r.status_code == 413 and _is_error_body(r.json())
    r = httpx.get(server.url + "/v1/nothing", headers=_auth())
    assert r.status_code == 404 and _is_error_body(r.json())


def test_metrics(server):
    text = httpx.get(server.url + "/metrics", headers=_auth()).text
    for name in ("reverie_requests_total", "reverie_queue_depth", "reverie_batch_rows_bucket",
                 "reverie_generated_tokens_total", "reverie_tokens_per_second",
                 "reverie_request_latency_seconds_bucket"):
        assert name in text


def test_client_leaves_mid_stream(server):
    body = {"model": "tiny-json", "prompt": "", "max_tokens": 60, "n": 16, "stream": True}
    before = _metric(server.url, "reverie_requests_total", endpoint="completions", status="499")
    with httpx.Client(timeout=30) as c, c.stream("POST", server.url + "/v1/completions",
                                                 json=body, headers=_auth()) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # the first event, then leave
    deadline = time.monotonic() + 10
    while _metric(server.url, "reverie_requests_total", endpoint="completions",
                  status="499") == before:
        assert time.monotonic() < deadline, "the server did not notice the client leaving"
        time.sleep(0.1)
    r = httpx.post(server.url + "/v1/completions", headers=_auth(),
                   json={"model": "tiny-json", "prompt": "{", "max_tokens": 4})
    assert r.status_code == 200
    # the same without streaming: the client gives up after 0.3 s and closes the connection
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", headers=_auth(), timeout=0.3,
                   json={**body, "stream": False})
    deadline = time.monotonic() + 10
    while _metric(server.url, "reverie_requests_total", endpoint="completions",
                  status="499") < before + 2:
        assert time.monotonic() < deadline, "the server did not notice the client leaving"
        time.sleep(0.1)


def test_queue_full_and_timeout(servers):
    url = servers[1].url + "/v1/completions"
    slow = {"model": "tiny-json", "prompt": "", "max_tokens": 60, "steps": 60}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as c:
            rs = await asyncio.gather(*[c.post(url, json=slow) for _ in range(6)])
        return [r.status_code for r in rs]

    codes = asyncio.run(burst())  # one runs, one waits, the others are refused
    assert 429 in codes and set(codes) <= {200, 429, 504}, codes
    r = httpx.post(url, json={**slow, "n": 16}, timeout=30)  # ~1.5 s of work, 0.5 s allowed
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    r = httpx.post(url, json={"model": "tiny-json", "prompt": "{", "max_tokens": 2})
    assert r.status_code == 200  # a short request under the same timeout is served
    with httpx.stream("POST", url, json={**slow, "n": 16, "stream": True}, timeout=30) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"  # a stream that runs out of time ends with an error event
    assert json.loads(events[-2])["error"]["code"] == "timeout"


# ---------------------------------------------------------------------------------------------
# in-process: faults and fuzz
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    from reverie.discrete import load_model

    return load_model("tiny-json")


def test_a_model_call_that_raises_fails_alone(lm, caplog):
    """A batch where one request breaks the model: that request gets a 500 (logged with its
    traceback), the others are served."""
    from reverie.serve.app import create_app

    net = lm.network
    z = lm.encode("Z")[0]
    forward = net.forward

    def faulty(x, *args, **kwargs):
        if bool((x == z).any()):
            raise RuntimeError("the model broke on Z")
        return forward(x, *args, **kwargs)

    app = create_app({"tiny-json": lm})

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            post = lambda p: c.post("/v1/completions", json={  # noqa: E731
                "model": "tiny-json", "prompt": p, "max_tokens": 8})
            first = await asyncio.gather(post("{"), post("Z"), post('{"a'))
            return [*first, await post("{"), await c.get("/metrics")]

    net.forward = faulty
    try:
        ok1, bad, ok2, after, metrics = asyncio.run(run())
    finally:
        del net.forward
    assert bad.status_code == 500 and bad.json()["error"]["type"] == "server_error"
    assert [ok1.status_code, ok2.status_code, after.status_code] == [200, 200, 200]
    assert any(r.exc_info and "broke on Z" in str(r.exc_info[1]) for r in caplog.records)
    # the three went in as one batch (which then ran again one by one), the fourth alone
    buckets = dict(re.findall(r'reverie_batch_requests_bucket\{le="([0-9.]+)"\} ([0-9.]+)',
                              metrics.text))
    assert (float(buckets["2.0"]), float(buckets["4.0"])) == (1.0, 2.0)


def test_fuzz_request_bodies_never_500(lm):
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from reverie.hub import load
    from reverie.serve.app import ServerConfig, create_app

    app = create_app({"tiny-json": lm, "two-moons": load("two-moons")},
                     ServerConfig(max_tokens=8, max_n=2, max_body=4096))
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(-1, 3),
                       st.text(max_size=12), st.sampled_from(["tiny-json", "two-moons", "{",
                                                              "low_confidence", "json_schema"]))
    value = st.recursive(scalar, lambda v: st.one_of(
        st.lists(v, max_size=3), st.dictionaries(st.text(max_size=8), v, max_size=3)),
        max_leaves=6)
    keys = st.sampled_from(["model", "prompt", "messages", "max_tokens", "n", "temperature",
                            "seed", "stop", "stream", "response_format", "regex", "sampler",
                            "steps", "size", "label", "guidance_scale", "top_p", "x"])
    good = {  # a valid body per endpoint, which the fuzz edits
        "/v1/completions": {"model": "tiny-json", "prompt": "{", "max_tokens": 3},
        "/v1/chat/completions": {"model": "tiny-json", "max_tokens": 3,
                                 "messages": [{"role": "user", "content": "{"}]},
        "/v1/images/generations": {"model": "two-moons", "steps": 3},
    }
    edits = st.dictionaries(keys, value, max_size=4)
    bodies = st.one_of(  # an edited valid body, a body of random fields, random bytes
        st.tuples(st.sampled_from(list(good)), edits).map(lambda t: (t[0], {**good[t[0]],
                                                                             **t[1]})),
        st.tuples(st.sampled_from(list(good)), edits),
        st.tuples(st.sampled_from(list(good)), st.binary(max_size=64)),
    )

    with TestClient(app, raise_server_exceptions=False) as c:
        seen = set()

        @settings(max_examples=120, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=bodies)
        def check(case):
            path, body = case
            if isinstance(body, bytes):
                r = c.post(path, content=body)
            else:
                r = c.post(path, content=json.dumps(body).encode())
            assert r.status_code in (200, 400, 404, 413), (path, body, r.text)
            if r.status_code != 200 and not (body == b"" or r.headers.get("content-type",
                                                                          "").startswith(
                    "text/event-stream")):
                assert _is_error_body(r.json()), r.text
            seen.add(r.status_code)

        check()
        assert c.get("/health").status_code == 200
    assert {200, 400} <= seen  # the fuzz reached both valid and invalid bodies


def test_constraints_are_compiled_once(lm):
    """Requests with the same schema reuse one compiled constraint (and its token automaton);
    another schema adds one."""
    from fastapi.testclient import TestClient

    from reverie.discrete.constraints import JsonSchema
    from reverie.serve.app import create_app

    app = create_app({"tiny-json": lm})
    state = app.app.state.reverie
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    body = {"model": "tiny-json", "prompt": "", "max_tokens": 40, "response_format": fmt}
    with TestClient(app) as c:
        for seed in (0, 1):
            assert c.post("/v1/completions", json={**body, "seed": seed}).status_code == 200
        assert len(state.constraints) == 1
        (first,) = state.constraints.values()
        assert isinstance(first, JsonSchema)
        assert first.automaton(lm) is JsonSchema(PERSON).automaton(lm)  # the automaton cache
        other = {**PERSON, "required": ["name"]}
        fmt2 = {"type": "json_schema", "json_schema": {"name": "p2", "schema": other}}
        assert c.post("/v1/completions", json={**body, "response_format": fmt2}).status_code \
            == 200
        assert len(state.constraints) == 2


def test_models_load_in_the_background_and_health_says_so(lm):
    """A model still loading: /health answers 503 "loading" with its id and requests naming it
    get 503 model_loading, while the loaded ones are served; once loaded it is served; a model
    whose loader raises is reported (failed) and the server goes on."""
    import threading

    from fastapi.testclient import TestClient

    from reverie.serve.app import create_app

    release = threading.Event()

    def slow():
        assert release.wait(30), "the test never released the loader"
        return lm

    def broken():
        raise OSError("weights file is truncated")

    app = create_app({"tiny-json": lm}, loading={"slow": slow, "broken": broken})
    body = {"prompt": "{", "max_tokens": 4}
    with TestClient(app) as c:
        health = c.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "loading"
        assert health.json()["loading"] == ["slow", "broken"]
        waiting = c.post("/v1/completions", json={"model": "slow", **body})
        assert waiting.status_code == 503
        assert waiting.json()["error"]["code"] == "model_loading"
        assert c.post("/v1/completions", json={"model": "tiny-json", **body}).status_code == 200
        release.set()
        deadline = time.monotonic() + 30
        while c.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "the model never finished loading"
            time.sleep(0.05)
        health = c.get("/health").json()
        assert health["status"] == "ok" and "slow" in health["models"]
        assert "truncated" in health["failed"]["broken"]
        assert c.post("/v1/completions", json={"model": "slow", **body}).status_code == 200
        failed = c.post("/v1/completions", json={"model": "broken", **body})
        assert failed.status_code == 503 and failed.json()["error"]["code"] == "model_failed"
        assert "truncated" in failed.json()["error"]["message"]


def test_model_specs_are_checked_before_the_server_starts():
    from reverie.serve.app import model_loaders

    assert list(model_loaders(["tiny-json", "moons=two-moons"])) == ["tiny-json", "moons"]
    with pytest.raises(ValueError, match="unknown model 'no-such-model'"):
        model_loaders(["no-such-model"])
    with pytest.raises(ValueError, match="two models have the id"):
        model_loaders(["digits", "digits"])
