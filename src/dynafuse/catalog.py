"""The names `dynafuse models`, `dynafuse datasets` and `train --help` list, read from the source without importing it.

Importing the registries costs about 1.8 s of CPU (torch, Lightning, transformers) for a listing that needs none of
it. Every registration is a call with literal arguments: `@register_model("name", "description", ...)` in
`models/*.py`, `register_dataset("name", "description")` in `data/*.py`, and the `READERS = {"fmt": reader, ...}`
table of `data/formats.py`. So the names and descriptions are read from those modules' syntax trees (`ast`), and
`tests/test_catalog.py` checks that they equal the live registries (`models.list_models()`, `data.DESCRIPTIONS`,
`data.formats.READERS`).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# what each FORMAT:PATH reader reads (the pickle readers run code when they load, hence the flag)
FORMAT_HELP = {"path": "a folder written by `dynafuse extract` (features from raw clips) or `dynafuse convert`"}


def _literal(node: ast.AST, path: Path):
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise ValueError(f"{path}:{node.lineno}: a registration must use literal strings, so that listings can "
                         "read it without importing the module (see dynafuse.catalog)") from None


def registrations(folder: str, function: str) -> dict[str, str]:
    """name -> description of every `function(name, description, ...)` call in `folder/*.py`, sorted by name."""
    out = {}
    for path in sorted((PACKAGE / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == function:
                args = {**dict(zip(("name", "description"), node.args)), **{k.arg: k.value for k in node.keywords}}
                out[_literal(args["name"], path)] = _literal(args["description"], path)
    return dict(sorted(out.items()))


@lru_cache(maxsize=1)
def models() -> dict[str, str]:
    """Registered model names -> descriptions (what `dynafuse.models.list_models()` returns)."""
    return registrations("models", "register_model")


@lru_cache(maxsize=1)
def datasets() -> dict[str, str]:
    """Registered dataset names -> descriptions (`dynafuse.data.DESCRIPTIONS`, sorted by name)."""
    return registrations("data", "register_dataset")


@lru_cache(maxsize=1)
def formats() -> list[str]:
    """The FORMAT of `--dataset FORMAT:PATH` (the keys of `dynafuse.data.formats.READERS`)."""
    path = PACKAGE / "data" / "formats.py"
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "READERS" for t in node.targets):
            return [_literal(k, path) for k in node.value.keys]
    raise ValueError(f"{path}: no READERS table")


def format_descriptions() -> dict[str, str]:
    """`FORMAT:PATH` -> what it reads, for `dynafuse datasets`."""
    return {f"{k}:PATH": FORMAT_HELP.get(k, f"a user's {k.upper()} pickle (needs --allow-pickle)") for k in formats()}
