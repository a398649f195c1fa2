"""Screenshots of the ``reverie serve`` playground for docs/serve.md, taken in headless
Chromium with the helpers of tests/test_playground.py (a real server on loopback, the page
driven through Selenium):

* docs/playground-1280.png: ``shapes`` at 1280x800, two guidance scales side by side;
* docs/playground-narrow.png: ``digits`` in a 420 px wide window (all of the page), a grid of
  eight;
* docs/playground-text.png: ``tiny-json`` at 1280x800, a schema-constrained output with its badge.

Run from the repository root: ``PYTHONPATH=src python scripts/playground_screenshots.py``
(needs chromium and chromedriver; about a minute on a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_playground import Page, Server, open_browser, resize  # noqa: E402

PET = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8},
                   "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "pet": {"enum": ["cat", "dog", "fish"]}},
    "required": ["name", "age", "pet"],
    "additionalProperties": False,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    server = Server("digits", "tiny-json", "shapes")
    try:
        driver = open_browser(1280, 800)
        try:
            page = Page(driver, server.url)
            page.model("shapes")
            for field, value in (("prompt", "a red circle on the left"), ("steps", 20),
                                 ("sampler", "dpmpp_2m"), ("guidance", "cfg"), ("scale", 1),
                                 ("seed", 0), ("n", 4)):
                page.set(field, value)
            page.mode("scales")
            page.set("scale-b", 4)
            shown = page.generate_images()
            assert len(shown) == 8 and page.error("image") is None, page.error("image")
            driver.save_screenshot(str(args.out / "playground-1280.png"))

            page.model("tiny-json")
            page.set("constraint-kind", "json_schema")
            page.set("constraint", json.dumps(PET, indent=2))
            page.set("max-tokens", 48)
            page.set("text-seed", 3)
            text = page.generate_text()
            assert page.badge() == "valid", (text, page.error("text"))
            driver.save_screenshot(str(args.out / "playground-text.png"))

            resize(driver, 420)
            page.model("digits")
            page.mode("grid")
            for field, value in (("label", "7"), ("steps", 10), ("guidance", "cfg"),
                                 ("scale", 2), ("seed", 0), ("n", 8)):
                page.set(field, value)
            shown = page.generate_images()
            assert len(shown) == 8 and page.error("image") is None, page.error("image")
            resize(driver, 420, None)  # the whole page: controls stacked above the results
            driver.save_screenshot(str(args.out / "playground-narrow.png"))
        finally:
            driver.quit()
    finally:
        server.stop()
    print(f"wrote {args.out}/playground-{{1280,text,narrow}}.png")


if __name__ == "__main__":
    main()
