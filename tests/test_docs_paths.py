"""README.md and docs/*.md name module files and dotted module paths; every one must exist (no rot).

A file path ``minivae/<path>.py`` or a folder ``minivae/<dir>/`` must be in the repository; a dotted
name ``minivae.a.b`` must resolve, module or attribute: the longest importable prefix is imported
and the rest is looked up with ``getattr`` (so ``minivae.VAE`` and ``minivae.study.posterior`` both
resolve). The old flat paths of minivae/_compat.py still import, but the docs must not use them
(unless the name is public anyway: ``minivae.posterior`` is in ``minivae.__all__``).
"""
import importlib
import re
from pathlib import Path

import pytest

import minivae
from minivae._compat import OLD_PATHS

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# not part of a longer path (``~/.cache/minivae/<dataset>/`` is a folder on the user's disk)
FILE_PATH = re.compile(r"(?<![\w./~$-])(minivae/(?:\w+/)*(?:\w+\.py|\w+/))")
DOTTED = re.compile(r"(?<![\w./])(minivae(?:\.\w+)+)")
FROM_IMPORT = re.compile(r"^\s*from\s+(minivae(?:\.\w+)*)\s+import\s+([\w, ]+)", re.MULTILINE)


def named(pattern):
    """(doc, name) for every distinct match of ``pattern`` in the docs."""
    return sorted({(doc.relative_to(ROOT).as_posix(), name)
                   for doc in DOCS for name in pattern.findall(doc.read_text())})


def dotted_names():
    """Dotted names, including those spelled ``from minivae.a import b`` in code blocks."""
    names = set(named(DOTTED))
    for doc in DOCS:
        for module, imported in FROM_IMPORT.findall(doc.read_text()):
            doc_name = doc.relative_to(ROOT).as_posix()
            names.update((doc_name, f"{module}.{name.strip()}") for name in imported.split(",") if name.strip())
    return sorted(names)


def resolve(dotted):
    """The module or attribute ``dotted`` names, and the module path that was imported for it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_path = ".".join(parts[:cut])
        try:
            target = importlib.import_module(module_path)
        except ModuleNotFoundError as error:
            if error.name is not None and not module_path.startswith(error.name):
                raise          # the module exists but one of its own imports is missing
            continue
        for part in parts[cut:]:
            assert hasattr(target, part), f"{module_path} has no attribute {part!r} (in {dotted})"
            target = getattr(target, part)
        return target, module_path
    raise AssertionError(f"{dotted}: no importable prefix")


def test_the_docs_name_files_and_modules():
    assert len(named(FILE_PATH)) >= 20
    assert len(dotted_names()) >= 15


@pytest.mark.parametrize("doc,path", named(FILE_PATH), ids="{}".format)
def test_file_path_exists(doc, path):
    target = ROOT / path
    if path.endswith("/"):
        assert target.is_dir(), f"{doc} names {path}, which is not a folder"
    else:
        assert target.is_file(), f"{doc} names {path}, which is not a file"


@pytest.mark.parametrize("doc,dotted", dotted_names(), ids="{}".format)
def test_dotted_name_resolves(doc, dotted):
    resolve(dotted)
    parts = dotted.split(".")
    prefixes = {".".join(parts[:cut]) for cut in range(2, len(parts) + 1)}
    old = prefixes & {f"minivae.{name}" for name in OLD_PATHS if name not in minivae.__all__}
    assert not old, f"{doc} names {dotted} through the old path {old.pop()}; see minivae/_compat.py"


def table_rows():
    """(folder, file) for every ``name.py`` or ``name/`` a row of README's "What is inside" names
    under the row's folder (``minivae/training/`` | ... ``loop.py`` ... ``data/`` ... ``idx.py``)."""
    rows = re.findall(r"^\| `(minivae/(?:\w+/)+)` \|(.*)\|$", (ROOT / "README.md").read_text(), re.MULTILINE)
    return sorted({(folder, name) for folder, text in rows for name in re.findall(r"`(\w+\.py|\w+/)`", text)})


def test_the_table_has_a_row_per_subpackage():
    folders = {folder for folder, _ in table_rows()}
    assert folders == {f"minivae/{name}/" for name in ("ops", "backend", "fast", "training", "study", "plots")}


@pytest.mark.parametrize("folder,name", table_rows(), ids="{}".format)
def test_table_file_exists(folder, name):
    found = [path for path in (ROOT / folder).rglob(name.rstrip("/")) if path.is_dir() == name.endswith("/")]
    assert found, f"README's row for {folder} names {name}, which is nowhere under it"


def test_the_patterns_find_what_they_should():
    text = ("see `minivae/fast/engine.py::FusedStep`, `minivae/ops/`, `~/.cache/minivae/<dataset>/`, "
            "$XDG_CACHE_HOME/minivae/x/, minivae.study.posterior and minivae.VAE(...); minivae. Then")
    assert FILE_PATH.findall(text) == ["minivae/fast/engine.py", "minivae/ops/"]
    assert DOTTED.findall(text) == ["minivae.study.posterior", "minivae.VAE"]
    assert FROM_IMPORT.findall("from minivae.study import estimators, posterior\n") == [
        ("minivae.study", "estimators, posterior")]
    assert resolve("minivae.VAE")[1] == "minivae"
    assert resolve("minivae.study.posterior.elbo_gap")[1] == "minivae.study.posterior"
