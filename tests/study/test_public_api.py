"""The study tools are built on the model's public methods only: no private attribute of a model
(``model._...``) and no test of the likelihood's name, so that a change inside the VAE cannot
silently change what the study computes."""
import re
from pathlib import Path

import pytest

import minivae.study

SOURCES = sorted(Path(minivae.study.__file__).parent.glob("*.py"))


def offending_lines(pattern):
    return [f"{path.name}:{number}: {line.strip()}"
            for path in SOURCES for number, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(pattern, line)]


def test_there_are_study_sources():
    assert {"estimators.py", "posterior.py"} <= {path.name for path in SOURCES}


@pytest.mark.parametrize("pattern", [r"model\._", r"\.likelihood\s*=="])
def test_study_uses_only_public_model_api(pattern):
    assert offending_lines(pattern) == []
