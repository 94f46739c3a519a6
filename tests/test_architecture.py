"""The layers of README's Architecture section, checked on the code: every import of a dynafuse module (at module
level or inside a function) goes to the same layer or one below, and no two modules import each other."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dynafuse"
LAYERS = [  # lowest first; a module may import from its own layer or any layer below
    {"errors", "files", "progress", "catalog"},
    {"metrics", "losses", "config"},
    {"data"},
    {"models"},
    {"training"},
    {"experiments", "analysis", "media"},
    {"serve"},
    {"cli"},
]


def layer_of(module: str) -> int:
    """`dynafuse.training.run` -> the index of `training` in LAYERS."""
    top = module.split(".")[1] if module.count(".") else ""
    return next((i for i, names in enumerate(LAYERS) if top in names), -1)


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The dynafuse modules `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("dynafuse"):
                # `from . import x` names submodules: count the submodule when it is one
                subs = [f"{target}.{a.name}" for a in node.names
                        if (SRC.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()]
                out.update(subs or [target])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("dynafuse"))
    return out


FILES = sorted(p for p in SRC.rglob("*.py") if "configs" not in p.parts)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_only_look_down(path):
    here = layer_of(module_name(path))
    if here < 0:
        return  # the package root
    upward = [m for m in imports(path) if layer_of(m) > here]
    assert not upward, f"{module_name(path)} (layer {here}) imports from higher layers: {upward}"


def test_no_import_cycles():
    graph = {module_name(p): {m for m in imports(p) if m != module_name(p)} for p in FILES}

    def resolve(m: str) -> str:  # `dynafuse.data` (a package) -> its __init__ module name, already in the graph
        return m if m in graph else m.rsplit(".", 1)[0]

    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            n = resolve(n)
            if n not in graph or n == m or m.startswith(n + ".") or n.startswith(m + "."):
                continue  # a package and its own submodules are one unit
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [m, n]))
            if not state.get(n):
                visit(n, trail + [m])
        state[m] = 2

    for m in graph:
        if not state.get(m):
            visit(m, [])


def test_no_private_names_across_modules():
    """`from x import _name` across modules: what others use gets a public name."""
    bad = []
    for p in FILES:
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("dynafuse")):
                bad += [f"{module_name(p)}: {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.endswith("__")]  # __version__ is public
    assert not bad, bad


def test_bad_settings_and_run_paths_are_reported_before_lightning_is_imported():
    """A wrong model name or setting, or a wrong run folder, is reported before the trainer (Lightning, seconds to
    import) is loaded: the checks live below it."""
    code = ("import sys\n"
            "from dynafuse.cli import main\n"
            "codes = [main(['train', '--model', 'daff', '--dataset', 'mosi']),\n"
            "         main(['train', '--model', 'daf', '--dataset', 'mosi', 'train.lr=fast']),\n"
            "         main(['robust', 'no/such/run']), main(['eval', '--run', 'no/such/run'])]\n"
            "assert codes == [2, 2, 2, 2], codes\n"
            "assert not any(m == 'lightning' or m.startswith('lightning.') for m in sys.modules), 'lightning imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("dynafuse: error:") == 4, done.stderr
