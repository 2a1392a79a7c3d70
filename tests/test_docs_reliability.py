"""docs/reliability.md cannot rot: every test its probe table names exists, every row names one,
and the counts it states are the table's."""
import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
TEST = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
HEADERS = {"probe (call)", "probe (command)", "probe (call or command)"}
COUNTS = re.compile(r"Probes tried: (\d+)\. Passing: (\d+)\. Fixed in this issue: (\d+)\.")


def probe_rows():
    """The rows of the probe tables: ``(cells, line)`` for each table row after a header row whose
    third column is "test"."""
    rows, in_table = [], False
    for line in DOC.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table = False
        elif cells[0] in HEADERS:
            assert cells[1:] == ["expected", "test", "fixed here"], line
            in_table = True
        elif in_table and not set(cells[0]) <= set("-"):
            rows.append((cells, line))
    return rows


@functools.lru_cache(maxsize=None)
def functions_in(path):
    tree = ast.parse((ROOT / path).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_row_names_one_test_that_exists_and_says_whether_it_was_fixed():
    rows = probe_rows()
    assert len(rows) > 50
    for cells, line in rows:
        assert len(cells) == 4, line
        named = TEST.findall(cells[2])
        assert len(named) == 1, f"one test per row: {line}"
        path, name = named[0]
        assert (ROOT / path).is_file(), f"{path} does not exist: {line}"
        assert name in functions_in(path), f"{path} has no {name}: {line}"
        assert re.fullmatch(r"no|yes \([0-9a-f]{7}(, [0-9a-f]{7})*(: [^)]+)?\)", cells[3]), line


def test_the_counts_are_the_tables():
    rows = probe_rows()
    match = COUNTS.search(DOC.read_text())
    assert match, "the counts line is missing"
    tried, passing, fixed = map(int, match.groups())
    assert tried == len(rows)
    assert passing == tried            # every row is a test of the suite, which passes
    assert fixed == sum(cells[3].startswith("yes") for cells, _ in rows)


def test_the_readme_links_it():
    assert "(docs/reliability.md)" in (ROOT / "README.md").read_text()
