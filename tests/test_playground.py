"""The playground page of ``reverie serve`` (``GET /``), driven in headless Chromium (Selenium
with Debian's chromium and chromedriver) against the real server on a free loopback port,
with an API key: an image grid whose PNGs decode and equal the API's own answer for the
settings captioned under them, side-by-side runs sharing their seeds, a schema-constrained
text streamed into the page that validates (jsonschema in Python) with the in-browser badge
saying "valid", and its must-fail siblings (the badge says "invalid" for strings that break
the schema or the regex), errors shown on the page (a scale out of range, a schema that does
not parse, a server that went away) with the page still usable after them. The helpers are
reused by scripts/playground_screenshots.py."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")
webdriver = pytest.importorskip("selenium.webdriver")

from tests.test_serve import KEY, PERSON, _free_port  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


# ---------------------------------------------------------------------------------------------
# Helpers (also used by scripts/playground_screenshots.py)
# ---------------------------------------------------------------------------------------------


class Server:
    """The app of ``reverie serve --model M ... [--api-key KEY]`` under uvicorn in a thread of
    this process (the models load here, with torch already imported), on a free loopback
    port. A watchdog stops it after ``lifetime`` seconds whatever happens."""

    def __init__(self, *models: str, key: str | None = KEY, port: int | None = None,
                 lifetime: float = 300) -> None:
        import uvicorn

        from reverie.serve.app import ServerConfig, create_app, load_models

        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(load_models(list(models)), ServerConfig(api_key=key))
        self.server = uvicorn.Server(uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning",
            timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.watchdog = threading.Timer(lifetime, self.stop)
        self.watchdog.daemon = True
        self.watchdog.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.watchdog.cancel()


def open_browser(width: int = 1280, height: int = 800) -> webdriver.Chrome:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(30)
    resize(driver, width, height)
    return driver


def resize(driver: webdriver.Chrome, width: int, height: int | None = None) -> None:
    """Make the page's viewport exactly ``width`` x ``height`` CSS pixels (``None``: as tall
    as the page, for a screenshot of all of it)."""
    metrics = {"width": width, "height": height or 800, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    if height is None:
        metrics["height"] = driver.execute_script(
            "return document.documentElement.scrollHeight;")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


class Page:
    """The playground in ``driver``: fields are set through JavaScript (with the events a
    person's edit fires), buttons clicked, and the page's state read back."""

    def __init__(self, driver: webdriver.Chrome, url: str, key: str | None = KEY) -> None:
        self.d = driver
        driver.get(url + "/")
        if key is not None:  # the server needs a key: the page asks for it
            self.wait("!document.getElementById('key-form').hidden")
            self.set("key", key)
            self.d.find_element("css selector", "#key-form button").click()
        self.wait("document.getElementById('model').options.length > 0")

    def js(self, script: str, *args):
        return self.d.execute_script(script, *args)

    def wait(self, condition: str, timeout: float = 30) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, timeout, poll_frequency=0.05).until(
            lambda d: d.execute_script(f"return Boolean({condition});"))

    def set(self, element_id: str, value) -> None:
        self.js("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                "e.dispatchEvent(new Event('input', {bubbles: true}));"
                "e.dispatchEvent(new Event('change', {bubbles: true}));", element_id, str(value))

    def mode(self, value: str) -> None:
        self.js("const r = document.querySelector(`input[name=mode][value=${arguments[0]}]`);"
                "r.checked = true; r.dispatchEvent(new Event('change', {bubbles: true}));", value)

    def model(self, model_id: str) -> None:
        self.set("model", model_id)

    def click(self, element_id: str) -> None:
        self.d.find_element("id", element_id).click()

    def run(self, button: str) -> None:
        """Click a generate button and wait until its run ended (with results or an error;
        the page counts finished runs in ``body.dataset.runs``)."""
        before = int(self.js("return Number(document.body.dataset.runs || 0);"))
        self.click(button)
        self.wait(f"Number(document.body.dataset.runs || 0) > {before}")

    def error(self, panel: str) -> str | None:
        return self.js("const e = document.getElementById(arguments[0]);"
                       "return e.hidden ? null : e.textContent;", f"{panel}-error")

    def generate_images(self) -> list[dict]:
        """Press generate and wait for the results or an error: ``[{src, caption,
        width, column}]`` of every image shown."""
        self.run("generate")
        self.wait("[...document.querySelectorAll('#results img')].every(i => i.complete)")
        return self.js("return [...document.querySelectorAll('#results figure')].map(f => {"
                       "const i = f.querySelector('img'); const h = f.closest('.column')"
                       ".querySelector('h2'); return {src: i ? i.src : null, width: i ? "
                       "i.naturalWidth : 0, caption: f.querySelector('figcaption').innerText,"
                       " column: h ? h.textContent : ''};});")

    def generate_text(self) -> str:
        """Press generate and wait until the stream ended (or failed); the output box."""
        self.run("text-generate")
        return self.js("return document.getElementById('text-output').value;")

    def badge(self) -> str:
        return self.js("return document.getElementById('badge').dataset.state;")

    def check(self, text: str) -> str:
        """The badge's verdict on ``text`` typed into the output box."""
        self.set("text-output", text)
        return self.badge()


def png_size(src: str) -> tuple[int, int]:
    """Decode a ``data:image/png;base64,...`` URL with PIL; its (width, height)."""
    from PIL import Image

    head, _, data = src.partition(",")
    assert head == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        im.load()  # decodes every pixel (raises on a broken PNG)
        return im.size


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

pytestmark = pytest.mark.skipif(
    not HAVE_BROWSER, reason=f"the browser test needs {CHROMIUM} and {CHROMEDRIVER} "
                             "(Debian: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def server():
    srv = Server("digits", "tiny-json")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(server):
    driver = open_browser()
    try:
        yield Page(driver, server.url)
    finally:
        driver.quit()


def _api_images(server: Server, body: dict) -> list[str]:
    r = httpx.post(server.url + "/v1/images/generations", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    return [f"data:image/png;base64,{d['b64_json']}" for d in r.json()["data"]]


def test_options_come_from_the_registries(server):
    import reverie
    from reverie.discrete import SAMPLERS as TEXT_SAMPLERS
    from reverie.grids import GRIDS
    from reverie.serve.images import image_guidance

    r = httpx.get(server.url + "/v1/reverie/options", timeout=10)
    assert r.status_code == 401  # the key is needed, like every endpoint but / and /health
    assert httpx.get(server.url + "/", timeout=10).status_code == 200
    got = httpx.get(server.url + "/v1/reverie/options", timeout=10,
                    headers={"Authorization": f"Bearer {KEY}"}).json()
    by_id = {m["id"]: m for m in got["models"]}
    digits, text = by_id["digits"], by_id["tiny-json"]
    assert [s["name"] for s in digits["samplers"]] == list(reverie.SAMPLERS)
    assert digits["grids"] == list(GRIDS) and digits["classes"] == [str(k) for k in range(10)]
    assert [g["name"] for g in digits["guidance"]] == image_guidance()
    assert {"cfg", "apg", "cfg_pp"} <= set(image_guidance()) and "autoguidance" not in \
        image_guidance()  # autoguidance needs a weaker model, not the null class
    cfg_pp = next(g for g in digits["guidance"] if g["name"] == "cfg_pp")
    assert (cfg_pp["min"], cfg_pp["max"], cfg_pp["samplers"]) == (0.0, 1.0, ["ddim"])
    assert [s["name"] for s in text["samplers"]] == [
        k for k, s in TEXT_SAMPLERS.items() if "masked" in s.processes]
    assert text["max_tokens"]["max"] == 63  # tiny-json's canvas of 64, one token of prompt


def test_image_grid_and_guidance_extensions(server):
    """The fields the page sends beyond docs/serve.md's first ones: ``grid`` and ``guidance``
    change the draw, and bad values are refused with their reason."""
    base = {"model": "digits", "label": 2, "steps": 4, "seed": 0, "n": 1, "guidance_scale": 3}
    plain = _api_images(server, base)
    assert _api_images(server, {**base, "grid": "logsnr"}) == plain  # dpmpp_2m's own grid
    assert _api_images(server, {**base, "grid": "karras"}) != plain
    assert _api_images(server, {**base, "guidance": "cfg"}) == plain
    assert _api_images(server, {**base, "guidance": "apg"}) != plain
    for bad, message in (({"grid": "nope"}, "unknown grid 'nope'"),
                         ({"guidance": "autoguidance"}, "unknown guidance 'autoguidance'"),
                         ({"guidance": "cfg_pp", "guidance_scale": 0.5}, "with the sampler(s) "
                          "ddim only"),
                         ({"guidance": "apg", "label": None}, "need a label")):
        r = httpx.post(server.url + "/v1/images/generations", json={**base, **bad}, timeout=30,
                       headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_image_grid_decodes_and_matches_the_api(server, page, tmp_path):
    page.model("digits")
    page.mode("grid")
    for field, value in (("label", "7"), ("sampler", "dpmpp_2m"), ("steps", 4), ("grid", ""),
                         ("guidance", "cfg"), ("scale", 2), ("seed", 5), ("n", 3)):
        page.set(field, value)
    shown = page.generate_images()
    assert page.error("image") is None
    assert len(shown) == 3 and all(s["width"] > 0 for s in shown)  # decoded by the browser
    assert all(png_size(s["src"]) == (8, 8) for s in shown)  # and by PIL
    assert shown[2]["caption"] == "seed 7 · class 7\ndpmpp_2m · 4 steps · grid default · cfg 2"
    # the page drew what its captions say: the API's answer for those settings
    body = {"model": "digits", "label": "7", "sampler": "dpmpp_2m", "steps": 4,
            "guidance": "cfg", "guidance_scale": 2, "seed": 5, "n": 3}
    assert [s["src"] for s in shown] == _api_images(server, body)
    assert [s["src"] for s in shown] != _api_images(server, {**body, "guidance_scale": 1})
    page.d.save_screenshot(str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 5000


def test_side_by_side_shares_the_seed(server, page):
    page.model("digits")
    for field, value in (("label", "3"), ("steps", 4), ("seed", 11), ("n", 2),
                         ("guidance", "cfg"), ("scale", 1), ("sampler", "dpmpp_2m")):
        page.set(field, value)
    page.mode("samplers")
    page.set("sampler-b", "euler")
    shown = page.generate_images()
    assert [s["column"] for s in shown] == ["A: dpmpp_2m"] * 2 + ["B: euler"] * 2
    assert all("\neuler · 4 steps" in s["caption"] for s in shown[2:])
    assert [s["src"] for s in shown[:2]] == _api_images(server, {
        "model": "digits", "label": "3", "steps": 4, "seed": 11, "n": 2,
        "sampler": "dpmpp_2m", "guidance": "cfg", "guidance_scale": 1})
    page.mode("scales")
    page.set("scale-b", 5)
    shown = page.generate_images()
    assert [s["column"] for s in shown] == ["A: scale 1"] * 2 + ["B: scale 5"] * 2
    assert shown[0]["caption"].startswith("seed 11 ") and shown[2]["caption"].startswith("seed 11 ")
    assert shown[0]["src"] != shown[2]["src"]  # the scales differ, the seeds do not
    page.mode("grid")


def test_bad_settings_show_an_error_and_the_page_stays_usable(page):
    page.model("digits")
    page.mode("grid")
    for field, value in (("label", "1"), ("steps", 3), ("n", 1), ("guidance", "cfg_pp"),
                         ("sampler", "ddim"), ("scale", 3)):
        page.set(field, value)
    page.generate_images()
    message = page.error("image")
    assert message and "guidance_scale 3 is outside cfg_pp's range [0, 1]" in message
    page.set("scale", 500)  # past the request schema's bound
    page.set("guidance", "cfg")
    page.generate_images()
    assert "guidance_scale" in (page.error("image") or "")
    page.set("scale", 0.5)  # fixed: the same page draws again
    shown = page.generate_images()
    assert page.error("image") is None and len(shown) == 1 and shown[0]["width"] > 0


def test_schema_constrained_text_streams_and_validates(page, tmp_path):
    page.model("tiny-json")
    page.set("constraint-kind", "json_schema")
    page.set("constraint", json.dumps(PERSON, indent=2))
    for field, value in (("text-prompt", ""), ("text-sampler", "low_confidence"),
                         ("max-tokens", 32), ("temperature", 1), ("text-seed", 3)):
        page.set(field, value)
    text = page.generate_text()
    assert page.error("text") is None
    jsonschema.validate(json.loads(text), PERSON)  # valid in Python
    assert page.badge() == "valid"  # and in the browser
    pieces = page.js("return [...document.querySelectorAll('#pieces code')]"
                     ".map(c => c.textContent);")  # as they were streamed
    assert len(pieces) >= 1 and "".join(pieces) == text
    page.d.save_screenshot(str(tmp_path / "text.png"))
    # must-fail siblings: the badge rejects strings that break the schema
    assert page.check('{"name":"Ken","age":31}') == "valid"
    assert page.check('{"name":"Kenneth-Ng","age":31}') == "invalid"  # maxLength 8
    assert page.check('{"name":"Ken","age":"31"}') == "invalid"  # type integer
    assert page.check('{"name":"Ken"}') == "invalid"  # required age
    assert page.check('{"name":"Ken","age":31,"x":1}') == "invalid"  # additionalProperties
    assert page.check('{"name":"Ken","age":31') == "invalid"  # not JSON
    page.set("constraint-kind", "regex")
    page.set("constraint", "[a-z]+( [a-z]+)*")
    assert page.check("two words") == "valid"
    assert page.check("two words!") == "invalid"  # a full match, not a search
    page.set("constraint-kind", "json_schema")


#: (schema, instances): the in-browser validator must agree with Python's jsonschema on each
_NODE = {"type": "object", "properties": {"kids": {"type": "array",
                                                   "items": {"$ref": "#/$defs/node"}}},
         "additionalProperties": False}
AGREE = [
    ({"type": "integer"}, [3, 3.5, "3", True]),
    ({"type": ["string", "null"]}, [None, "a", 1]),
    ({"enum": ["a", 1, {"x": [1]}]}, [{"x": [1]}, {"x": [2]}, "a", "b"]),
    ({"const": [1, {"a": None}]}, [[1, {"a": None}], [1, {"a": 0}]]),
    ({"type": "string", "minLength": 2, "maxLength": 3}, ["é€", "abcd", "\U0001f600", "ab"]),
    ({"type": "string", "pattern": "^a+b"}, ["aab!", "b"]),
    ({"type": "string", "pattern": "\\d{2}"}, ["x12y", "x1y"]),
    ({"minimum": 0, "exclusiveMaximum": 10}, [0, 10, -0.5, 9.99, "x"]),
    ({"exclusiveMinimum": 1, "maximum": 2}, [1, 2, 1.5]),
    ({"multipleOf": 0.5}, [2.5, 2.2, 0]),
    ({"prefixItems": [{"type": "string"}], "items": {"type": "integer"}, "maxItems": 3,
      "minItems": 1}, [["a", 1, 2], ["a", "b"], [1], ["a", 1, 2, 3], []]),
    ({"uniqueItems": True}, [[1, 2, 1], [{"a": 1}, {"a": 2}], [[1], [1]]]),
    ({"contains": {"type": "integer"}, "minContains": 2}, [[1, "a", 2], [1, "a"]]),
    ({"contains": {"type": "integer"}, "maxContains": 1}, [[1, "a"], [1, 2], ["a"]]),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
      "additionalProperties": False}, [{"a": 1}, {}, {"a": 1, "b": 2}, {"a": "1"}]),
    ({"additionalProperties": {"type": "integer"}}, [{"a": 1}, {"a": "x"}]),
    ({"propertyNames": {"maxLength": 2}, "maxProperties": 2, "minProperties": 1},
     [{"ab": 1}, {"abc": 1}, {}, {"a": 1, "b": 2, "c": 3}]),
    ({"dependentRequired": {"a": ["b"]}}, [{"a": 1}, {"a": 1, "b": 2}, {"b": 1}]),
    ({"anyOf": [{"type": "string"}, {"minimum": 5}]}, ["x", 6, 4]),
    ({"oneOf": [{"type": "integer"}, {"minimum": 5}]}, [6, 1, 5.5, "x"]),
    ({"allOf": [{"minimum": 1}, {"maximum": 3}]}, [2, 4]),
    ({"not": {"type": "string"}}, [1, "a"]),
    ({"if": {"type": "integer"}, "then": {"minimum": 0}, "else": {"type": "string"}},
     [1, -1, "x", 1.5]),
    ({"$defs": {"node": _NODE}, "$ref": "#/$defs/node"},
     [{"kids": [{"kids": []}]}, {"kids": [{"x": 1}]}]),
    ({"properties": {"a": False}}, [{"a": 1}, {}]),
    ({"format": "date"}, ["2024-02-29", "2023-02-29", "2024-1-01"]),
    ({"format": "ipv4"}, ["1.2.3.4", "256.1.1.1", "01.2.3.4"]),
    ({"format": "ipv6"}, ["::1", "1::2::3", "fe80::1:2:3:4:5:6", "1:2:3:4:5:6:7:8:9",
                          "::ffff:1.2.3.4"]),
    ({"format": "uuid"}, ["123e4567-e89b-12d3-a456-426614174000", "123e4567"]),
    ({"format": "email"}, ["a@b.c", "ab.c"]),
]
#: formats Python's jsonschema does not check without extra packages: verdicts by hand
BY_HAND = [
    ({"format": "time"}, "12:00:00Z", "valid"), ({"format": "time"}, "25:00:00Z", "invalid"),
    ({"format": "date-time"}, "2024-01-01T00:00:00+01:00", "valid"),
    ({"format": "date-time"}, "2024-13-01T00:00:00Z", "invalid"),
    ({"format": "duration"}, "P1DT2H", "valid"), ({"format": "duration"}, "PT", "invalid"),
    ({"format": "hostname"}, "a.b", "unchecked"),  # outside the subset: said, not passed
    ({"type": "string", "x-custom": 1}, '"a"', "unchecked"),
]


def test_in_browser_validator_agrees_with_jsonschema(page):
    from jsonschema import Draft202012Validator

    cases = [(s, json.dumps(v)) for s, values in AGREE for v in values]
    cases += [(s, v if v.startswith('"') else json.dumps(v)) for s, v, _ in BY_HAND]
    got = page.js("return arguments[0].map(([s, t]) => reverieCheck.checkJson(s, t).state);",
                  cases)
    want = [("valid" if Draft202012Validator(
        s, format_checker=Draft202012Validator.FORMAT_CHECKER).is_valid(json.loads(t))
        else "invalid") for s, t in cases[:-len(BY_HAND)]] + [w for _, _, w in BY_HAND]
    wrong = [(s, t, g, w) for (s, t), g, w in zip(cases, got, want) if g != w]
    assert not wrong, wrong
    assert want.count("valid") > 30 and want.count("invalid") > 30


def test_a_schema_that_does_not_parse_is_reported(page):
    page.model("tiny-json")
    page.set("constraint-kind", "json_schema")
    page.set("constraint", '{"type": "object", "properties": ')
    page.generate_text()
    assert "The JSON schema does not parse" in (page.error("text") or "")
    page.set("constraint", '{"type": "object", "uniqueItems": 3}')  # the server refuses it
    page.generate_text()
    assert "response_format" in (page.error("text") or "")


def test_a_server_that_went_away_is_reported_and_its_return_noticed(server, page):
    """Last: it stops the module's server, then starts another on its port."""
    page.model("digits")
    server.stop()
    page.generate_images()
    assert "Could not reach the server" in (page.error("image") or "")
    page.wait("document.getElementById('status').classList.contains('down')")
    assert "not answering" in page.js("return document.getElementById('status').textContent;")
    assert "restarting" in page.js("return document.getElementById('status').title;")
    again = Server("two-moons", port=server.port)  # restarted, with other models
    try:
        page.wait("document.getElementById('status').classList.contains('ok') && "
                  "document.getElementById('model').value === 'two-moons'")
        page.set("n", 16)
        page.set("seed", 0)
        shown = page.generate_images()  # usable again; two-moons draws points, not images
        assert page.error("image") is None and len(shown) == 1
        assert shown[0]["caption"].startswith("16 samples, seeds 0..15")
        assert page.js("return document.querySelectorAll('#results svg circle').length;") == 16
    finally:
        again.stop()
