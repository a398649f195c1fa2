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

    def __init__(self, *models: str, key: str | None = KEY, lifetime: float = 300) -> None:
        import uvicorn

        from reverie.serve.app import ServerConfig, create_app, load_models

        self.port = _free_port()
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
    pieces = int(page.js("return document.getElementById('text-output').dataset.pieces;"))
    assert pieces >= 1
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


def test_a_schema_that_does_not_parse_is_reported(page):
    page.model("tiny-json")
    page.set("constraint-kind", "json_schema")
    page.set("constraint", '{"type": "object", "properties": ')
    page.generate_text()
    assert "The JSON schema does not parse" in (page.error("text") or "")
    page.set("constraint", '{"type": "object", "uniqueItems": 3}')  # the server refuses it
    page.generate_text()
    assert "response_format" in (page.error("text") or "")


def test_a_server_that_went_away_is_reported(server, page):
    """Last: it stops the module's server."""
    page.model("digits")
    server.stop()
    page.generate_images()
    assert "Could not reach the server" in (page.error("image") or "")
    page.wait("document.getElementById('status').classList.contains('down')")
    assert page.js("return document.getElementById('generate').disabled;") is False
