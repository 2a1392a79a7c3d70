"""docs/gradients.md names the function beside each formula; every name must exist (no rot)."""
import importlib
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "gradients.md"
REFERENCE = re.compile(r"minivae/([\w/]+)\.py::([\w.]+)")


def references():
    return sorted(set(REFERENCE.findall(DOC.read_text())))


def test_the_doc_names_functions():
    assert len(references()) >= 40


@pytest.mark.parametrize("module,name", references(), ids=lambda v: v)
def test_reference_exists(module, name):
    target = importlib.import_module("minivae." + module.replace("/", "."))
    for part in name.split("."):
        assert hasattr(target, part), f"minivae/{module}.py has no {name}"
        target = getattr(target, part)


def test_relative_links_point_at_files():
    for link in re.findall(r"\]\((\.\./[^)]+)\)", DOC.read_text()):
        assert (DOC.parent / link).resolve().exists(), link
