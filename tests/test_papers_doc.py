"""docs/papers.md stays a true map from the project's papers to reverie: every paper of the seed
list appears once, under its capability row; every test it cites exists; every implemented or
partial paper cites a test; the summary counts are the tables' counts."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "papers.md"

#: The seed map's rows (shared/SEEDMAP.md): paper numbers in the seed list's order.
ROWS = {
    "M1": (45, 56, 93, 92, 34, 35, 36, 66, 68, 76, 94, 64, 107, 7, 9, 25, 44),
    "M2": (46, 43, 62, 100, 10, 105),
    "M3": (97, 102, 40, 101, 61, 8, 99, 53, 30, 24),
    "M4": (13, 3, 75, 48, 119, 87, 39, 58, 116, 26, 85, 114),
    "M5": (14, 60, 96, 109, 17, 19, 117),
    "M6": (22, 80, 77, 52, 72, 71),
    "M7": (110, 108, 55, 106, 113, 88, 54, 89, 18, 112, 20, 67, 83),
    "M8": (1, 5),
    "M9": (90, 37),
    "M10": (4, 42, 6, 104),
    "M11": (16, 32, 65, 69, 118, 2, 27, 98, 84, 23, 50),
    "M12": (95, 12, 115, 51),
    "M13": (11, 21, 78, 31, 49, 63, 47, 41, 86, 15, 73, 91, 111, 38, 59, 28),
    "T": (57, 82, 70, 74, 79, 103),
    "X": (29, 33, 81),
}
ROW_OF = {n: row for row, papers in ROWS.items() for n in papers}
STATUSES = ("implemented", "partial", "not yet", "background")
# a cited test: `tests/dir/file.py::name` or `::name` (the file cited before it in the cell)
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)?::(\w+)`")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text: str) -> tuple[list[tuple[str, int, str, str]], dict[str, list[int]]]:
    """The paper rows ``(section, number, status, test cell)`` and the summary counts
    ``{row: [papers, implemented, partial, not yet, background]}``."""
    papers, summary, section = [], {}, None
    for line in text.splitlines():
        if line.startswith("## "):
            code = line[3:].split()[0]
            section = code if code in ROWS else None
        elif line.startswith("|"):
            cells = _cells(line)
            # a paper row: | # | paper | status | API | test | benchmark |
            if section is not None and cells[0].isdigit():
                papers.append((section, int(cells[0]), cells[2], cells[4]))
            elif section is None and cells[0].split()[0] in (*ROWS, "all"):   # the summary table
                if all(c.isdigit() for c in cells[1:]):
                    summary[cells[0].split()[0]] = [int(c) for c in cells[1:]]
    return papers, summary


def _test_exists(path: str, name: str, root: Path) -> bool:
    file = root / path
    return file.is_file() and re.search(rf"^\s*def {name}\(", file.read_text(), re.M) is not None


def problems(text: str, root: Path = ROOT) -> list[str]:
    """Everything that makes the map untrue; empty when it is complete and consistent."""
    out: list[str] = []
    papers, summary = parse(text)
    seen: dict[int, str] = {}
    counts = {row: Counter() for row in ROWS}
    for section, n, status, tests in papers:
        if n in seen:
            out.append(f"paper {n} is listed twice ({seen[n]} and {section})")
        seen[n] = section
        if ROW_OF.get(n) != section:
            out.append(f"paper {n} is under {section}; the seed map has it under {ROW_OF.get(n)}")
        kind = next((s for s in STATUSES if status.startswith(s)), None)
        if kind is None:
            out.append(f"paper {n}: status must start with one of {STATUSES}, got {status[:30]!r}")
            continue
        counts[section][kind] += 1
        refs, file = [], None
        for m in TEST_REF.finditer(tests):
            file = m.group(1) or file
            if file is None:
                out.append(f"paper {n}: `::{m.group(2)}` cites no file before it")
                continue
            refs.append((file, m.group(2)))
            if not _test_exists(file, m.group(2), root):
                out.append(f"paper {n}: {file}::{m.group(2)} does not exist")
        if kind in ("implemented", "partial") and not refs:
            out.append(f"paper {n} is {kind} but cites no test")
    for n in sorted(set(ROW_OF) - set(seen)):
        out.append(f"paper {n} ({ROW_OF[n]}) is missing")
    total = [0] * 5
    for row in ROWS:
        c = counts[row]
        got = [sum(c.values()), *(c[s] for s in STATUSES)]
        total = [a + b for a, b in zip(total, got)]
        if summary.get(row) != got:
            out.append(f"summary row {row} says {summary.get(row)}, the table has {got}")
    if summary.get("all") != total:
        out.append(f"summary row all says {summary.get('all')}, the tables have {total}")
    return out


def test_the_map_is_complete_and_true():
    assert problems(DOC.read_text()) == []


def _drop_row(text: str, n: int) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith(f"| {n} |"))


def _row(text: str, n: int) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {n} |"))


BROKEN = {
    "missing row": (lambda t: _drop_row(t, 97), "paper 97 (M3) is missing"),
    "duplicated row": (lambda t: t.replace(_row(t, 12), _row(t, 12) + "\n" + _row(t, 12)),
                       "paper 12 is listed twice"),
    "row in the wrong section": (lambda t: t.replace(_row(t, 90) + "\n", "").replace(
        _row(t, 4), _row(t, 4) + "\n" + _row(t, 90)), "paper 90 is under M10"),
    "test that does not exist": (lambda t: t.replace(
        "::test_ditto_gains_over_its_starting_noise", "::test_ditto_gains_nothing"),
        "test_search_exact.py::test_ditto_gains_nothing does not exist"),
    "implemented without a test": (lambda t: t.replace(_row(t, 18), re.sub(
        r"`tests/[^|]*", "—", _row(t, 18))), "paper 18 is implemented but cites no test"),
    "summary off by one": (lambda t: t.replace("| M8 constrained dLLM decoding | 2 | 2 |",
                                               "| M8 constrained dLLM decoding | 2 | 1 |"),
                           "summary row M8 says [2, 1, 0, 0, 0], the table has [2, 2, 0, 0, 0]"),
    "unknown status": (lambda t: t.replace("| not yet: a trained medical-imaging",
                                           "| planned: a trained medical-imaging"),
                       "paper 26: status"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_check_rejects_a_broken_copy(name):
    break_it, message = BROKEN[name]
    text = DOC.read_text()
    broken = break_it(text)
    assert broken != text
    found = problems(broken)
    assert any(message in p for p in found), found
