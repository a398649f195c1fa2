"""mkdocs hook: benchmark tables rendered from ``benchmarks/results/*.json``.

A page writes ``<!-- bench: NAME -->`` (or ``<!-- bench: NAME > key > subkey -->`` for one part of
the file) and the hook replaces it with markdown tables of ``benchmarks/results/NAME.json``, the
format written by ``reverie.bench.common.save_result``: a dict with ``benchmark``, ``date``,
``machine`` and whatever the benchmark returned. Rendering is generic: a list of dicts is a
table (one row per dict), a dict of dicts is a table keyed by name, scalars go into one
``setting | value`` table, and any other nesting is rendered part by part. A string naming a
``docs/*.png`` the page does not already show becomes that image. Every results file is also
published in the site as ``results/NAME.json`` and linked from its tables.

``<!-- include: FILE -->`` includes a markdown file of the repository root (BENCHMARKS.md) with
its ``docs/`` links made relative to the site.

A marker naming a missing file or key stops the build with a message saying which. The
Sphinx roles of the docstrings (``:class:`X```) are dropped from the API pages (``X`` stays).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
BENCH = re.compile(r"<!--\s*bench:\s*(?P<name>[\w.-]+)\s*(?P<path>(?:>[^>]*?)*)-->")
INCLUDE = re.compile(r"<!--\s*include:\s*(?P<file>[\w./-]+)\s*-->")
CAPTION_KEYS = ("benchmark", "date", "machine")
COLLAPSE_ROWS = 20  # longer tables go into a collapsed block
MAX_ROWS = 200  # longer ones are cut (the full data is in the linked JSON)


class BenchError(ValueError):
    """A marker that names a missing results file or key."""


def load_result(name: str, results: Path = RESULTS) -> dict[str, Any]:
    path = results / f"{name}.json"
    if not path.is_file():
        raise BenchError(
            f"no benchmark results file {path} for <!-- bench: {name} -->; "
            f"run `reverie bench` to write it or fix the name"
        )
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise BenchError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _short(v: Any) -> str:
    """A value as text: floats to 4 significant digits, lists and dicts written out."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def _cell(v: Any) -> str:
    text = _short(v)
    if isinstance(v, (list, dict)) and len(text) > 80:
        text = text[:77] + "..."
    return text.replace("\n", " ").replace("|", "\\|")


def _is_scalar(v: Any) -> bool:
    """A value that reads well in one table cell."""
    if isinstance(v, list):  # a short list (of lists) of numbers or words
        return "{" not in json.dumps(v, default=str) and len(_short(v)) <= 80
    if isinstance(v, dict):  # a small flat dict
        return len(v) <= 8 and all(
            not isinstance(x, (dict, list)) and not _printed(x) for x in v.values()
        )
    return not _printed(v)


def _printed(v: Any) -> bool:
    """A table the benchmark printed (its rows are rendered from the data instead)."""
    return isinstance(v, str) and "\n" in v


def _table(rows: list[dict[str, Any]], key: str | None = None) -> str:
    """Markdown table of dicts; ``key`` names a first column taken from ``row[key]``."""
    cols: list[str] = [key] if key else []
    for row in rows:
        cols += [c for c in row if c not in cols]
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in rows[:MAX_ROWS]:
        lines.append("| " + " | ".join(_cell(row[c]) if c in row else "" for c in cols) + " |")
    if len(rows) > MAX_ROWS:
        lines.append(f"\n*First {MAX_ROWS} of {len(rows)} rows; all of them in the JSON.*")
    return "\n".join(lines)


def _blocks(value: Any, title: str) -> list[tuple[str, str, int]]:
    """(title, markdown, rows) for every tabular part of ``value``."""
    if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
        return [(title, _table(value), len(value))]
    if isinstance(value, list) and value and all(isinstance(r, list) for r in value):
        rows = [{str(i + 1): x for i, x in enumerate(r)} for r in value]  # no names: numbered
        return [(title, _table(rows), len(rows))]
    if isinstance(value, list) and all(not isinstance(x, (dict, list)) for x in value):
        return [(title, "\n".join("- " + _cell(x) for x in value), len(value))]
    if not isinstance(value, dict):
        return [(title, _table([{"value": value}]), 1)]
    out: list[tuple[str, str, int]] = []
    # dicts of cell-sized values are records: two or more of them make one table keyed by name
    # (records with the same fields; a record's fields are numbers, words or short lists)
    groups: dict[frozenset[str], list[str]] = {}
    for k, v in value.items():
        if (
            isinstance(v, dict)
            and v
            and all(not isinstance(x, dict) and _is_scalar(x) for x in v.values())
        ):
            groups.setdefault(frozenset(v), []).append(k)
    records = [ks for ks in groups.values() if len(ks) > 1]
    in_records = {k for ks in records for k in ks}
    scalars = {k: v for k, v in value.items() if k not in in_records and _is_scalar(v)}
    if scalars:
        rows = [{"setting": k, "value": v} for k, v in scalars.items()]
        out.append((title, _table(rows), len(rows)))
    for ks in records:
        out.append((title, _table([{"name": k, **value[k]} for k in ks], "name"), len(ks)))
    rest = {k: v for k, v in value.items() if k not in scalars and k not in in_records}
    for k, v in rest.items():
        if _printed(v) or v in ([], {}) or (isinstance(v, dict) and all(map(_printed, v.values()))):
            continue
        out += _blocks(v, f"{title} › {k}" if title else str(k))
    return out


def _images(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.startswith("docs/") and value.endswith(".png") else []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [p for v in items for p in _images(v)]


def render(
    name: str,
    path: tuple[str, ...] = (),
    *,
    results: Path = RESULTS,
    json_link: str | None = None,
    page_text: str = "",
    page_dir: str = "",
) -> str:
    """The markdown that replaces ``<!-- bench: NAME > path... -->``."""
    data = load_result(name, results)
    value: Any = data
    for key in path:
        if not isinstance(value, dict) or key not in value:
            have = sorted(value) if isinstance(value, dict) else type(value).__name__
            raise BenchError(
                f"{name}.json has no key {key!r} under {' > '.join(path)}; it has {have}"
            )
        value = value[key]
    if not path:
        value = {k: v for k, v in data.items() if k not in CAPTION_KEYS}
    src = f"[`{name}.json`]({json_link})" if json_link else f"`benchmarks/results/{name}.json`"
    caption = f"{src}{' › ' + ' › '.join(path) if path else ''}"
    meta = ", ".join(str(data[k]) for k in ("date", "machine") if k in data)
    parts = [f"*From {caption}{' (' + meta + ')' if meta else ''}.*"]
    blocks = _blocks(value, "")
    shown = ""
    for title, table, rows in blocks:
        if rows > COLLAPSE_ROWS:
            parts.append(f'??? note "{title or name} ({rows} rows)"\n\n' + _indent(table))
        else:  # a title once over the tables of one part
            parts.append((f"**{title}**\n\n" if title and title != shown else "") + table)
        shown = title
    for img in dict.fromkeys(_images(value)):
        fname = img[len("docs/") :]
        if fname not in page_text and (ROOT / img).is_file():
            parts.append(f"![{Path(fname).stem}]({os.path.relpath(fname, page_dir or '.')})")
    # one block per results file: open when short, folded when long
    fold = "???+" if sum(r for _, _, r in blocks) <= 3 * COLLAPSE_ROWS else "???"
    label = f"{name}.json" + (" › " + " › ".join(path) if path else "")
    return f'{fold} abstract "Results: {label}"\n\n' + _indent("\n\n".join(parts)) + "\n"


def _indent(text: str) -> str:
    return "\n".join("    " + ln if ln else "" for ln in text.splitlines())


def include(file: str) -> str:
    path = ROOT / file
    if not path.is_file():
        raise BenchError(f"<!-- include: {file} -->: no file {path}")
    return path.read_text().replace("](docs/", "](")


def expand(markdown: str, page_dir: str = "", results: Path = RESULTS, link: bool = False) -> str:
    """Replace every bench and include marker of a page's markdown."""

    def bench(m: re.Match[str]) -> str:
        path = tuple(k.strip() for k in m["path"].split(">")[1:])
        if any(not k for k in path):
            raise BenchError(f"empty key in marker {m[0]!r}")
        json_link = os.path.relpath(f"results/{m['name']}.json", page_dir or ".") if link else None
        return render(
            m["name"],
            path,
            results=results,
            json_link=json_link,
            page_text=markdown,
            page_dir=page_dir,
        )

    return BENCH.sub(bench, INCLUDE.sub(lambda m: include(m["file"]), markdown))


# mkdocs event hooks ---------------------------------------------------------------------------


def on_files(files, config):  # publish each results file as results/NAME.json
    from mkdocs.structure.files import File

    for path in sorted(RESULTS.glob("*.json")):
        files.append(File.generated(config, f"results/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    from mkdocs.exceptions import PluginError

    try:
        return expand(markdown, os.path.dirname(page.file.src_uri), link=True)
    except BenchError as e:
        raise PluginError(f"{page.file.src_uri}: {e}") from e


ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc|obj):(?=<code)")


def on_page_content(html, page, config, files):  # docstrings' Sphinx roles (:class:`X`): keep X
    return ROLE.sub("", html)
