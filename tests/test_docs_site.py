"""The documentation site (mkdocs.yml over docs/): cheap checks; CI runs `mkdocs build --strict`."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hook():
    spec = importlib.util.spec_from_file_location(
        "bench_tables", DOCS / "hooks" / "bench_tables.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_files(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [f for v in nav.values() for f in _nav_files(v)]
    return [f for item in nav for f in _nav_files(item)]


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_files(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert sorted(pages - set(nav)) == []
    assert sorted(set(nav) - pages) == []
    assert len(nav) == len(set(nav))
    hooks = [ROOT / h for h in config["hooks"]]
    assert all(h.is_file() for h in hooks), hooks


def test_pages_link_inside_the_site():
    # links out of docs/ (../src, ../README.md) break `mkdocs build --strict`
    bad = [
        (p.name, m)
        for p in DOCS.rglob("*.md")
        for m in re.findall(r"\]\(([^)\s]+)\)", p.read_text())
        if m.startswith("../") and not p.parent.name == "api"
    ]
    assert bad == []


def test_api_pages_name_existing_modules():
    names = [
        m
        for p in (DOCS / "api").glob("*.md")
        for m in re.findall(r"^::: ([\w.]+)", p.read_text(), re.M)
    ]
    assert "reverie.samplers" in names and "reverie.guidance" in names
    for name in names:
        base = ROOT / "src" / Path(*name.split("."))
        assert base.with_suffix(".py").is_file() or (base / "__init__.py").is_file(), name


def _bash_blocks(text: str, section: str) -> list[str]:
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, re.S)


def test_front_page_has_the_readme_commands():
    readme = _bash_blocks((ROOT / "README.md").read_text(), "Quick start")
    index = _bash_blocks((DOCS / "index.md").read_text(), "Quick start")
    assert len(readme) == 2 and "pytest" in readme[1]
    assert index == readme


def test_hook_renders_a_results_file_as_tables(tmp_path):
    from reverie.bench.common import save_result

    hook = _hook()
    rows = [
        {"sampler": "euler", "nfe": 10, "sw": 0.123456},
        {"sampler": "heun", "nfe": 20, "sw": 0.5},
    ]
    save_result(
        "toy", {"n": 7, "rows": rows, "table": "| a |\n|---|"}, out=str(tmp_path / "toy.json")
    )
    text = hook.expand("# Page\n\n<!-- bench: toy -->\n", results=tmp_path)
    assert "<!--" not in text and "Results: toy.json" in text
    lines = [ln.strip() for ln in text.splitlines()]
    assert "| sampler | nfe | sw |" in lines
    assert "| euler | 10 | 0.1235 |" in lines and "| heun | 20 | 0.5 |" in lines
    assert "| n | 7 |" in lines  # scalars in a setting | value table
    assert "| a |" not in lines  # the printed table is not repeated
    # one part of a file
    part = hook.expand("<!-- bench: toy > rows -->", results=tmp_path)
    assert "| heun | 20 | 0.5 |" in [ln.strip() for ln in part.splitlines()]
    assert "| n | 7 |" not in [ln.strip() for ln in part.splitlines()]
    # a dict of records is one table keyed by name; cells holding '|' are escaped
    save_result(
        "rec", {"rows": {"fk": {"sw": 0.25}, "a|b": {"sw": 1.0}}}, out=str(tmp_path / "rec.json")
    )
    rec = [
        ln.strip()
        for ln in hook.expand("<!-- bench: rec > rows -->", results=tmp_path).splitlines()
    ]
    assert "| name | sw |" in rec and "| fk | 0.25 |" in rec and "| a\\|b | 1 |" in rec


def test_hook_rejects_a_missing_results_file_or_key(tmp_path):
    hook = _hook()
    with pytest.raises(hook.BenchError, match="no benchmark results file .*nothere.json"):
        hook.expand("<!-- bench: nothere -->", results=tmp_path)
    (tmp_path / "toy.json").write_text('{"rows": [{"a": 1}]}')
    with pytest.raises(hook.BenchError, match="no key 'cols'"):
        hook.expand("<!-- bench: toy > cols -->", results=tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(hook.BenchError, match="expected a JSON object"):
        hook.expand("<!-- bench: list -->", results=tmp_path)


def test_every_marker_in_the_docs_renders():
    hook = _hook()
    pages = [
        p
        for p in DOCS.glob("*.md")
        if "<!-- bench:" in p.read_text() or "<!-- include:" in p.read_text()
    ]
    assert len(pages) >= 15
    for page in pages:
        text = hook.expand(page.read_text())
        assert "<!-- bench:" not in text and "<!-- include:" not in text, page.name
    benchmarks = hook.expand((DOCS / "benchmarks.md").read_text())
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", benchmarks)
    assert images and all((DOCS / i).is_file() for i in images), images


def test_examples_marked_runs_as_is_run(capsys):
    # every python block under a heading "... (runs as is)" runs as printed (each about a second)
    ran = []
    for page in sorted(DOCS.glob("*.md")):
        sections = re.split(r"^## ", page.read_text(), flags=re.M)
        for section in sections:
            if section.split("\n", 1)[0].endswith("(runs as is)"):
                for code in re.findall(r"```python\n(.*?)```", section, re.S):
                    exec(compile(code, f"{page.name}:example", "exec"), {"__name__": "example"})
                    ran.append(page.stem)
    assert {"index", "samplers", "likelihood", "large", "processes", "constraints"} <= set(ran)
    assert "MultiDiffusion" in capsys.readouterr().out
