"""The layout of DESIGN.md holds: the import contracts, no import cycle between modules, modules and functions
of a size a person reads, and a `tether --help` that imports nothing heavy."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tether"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120
# Schema migrations are table definitions written once, not logic; they are exempt from the size rules.
EXEMPT = ("tether/store/migrations",)


def import_cycles(package: str) -> list[list[str]]:
    """The import cycles between the modules of ``package`` (imports inside functions included): each strongly
    connected component of the module graph with more than one module, or a module that imports itself."""
    graph = grimp.build_graph(package, cache_dir=None)
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # Tarjan's algorithm, iterative (no recursion limit on deep graphs)
        nonlocal counter
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    cycles.append(sorted(component))

    for module in modules:
        if module not in index:
            visit(module)
    return cycles


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is part of the test extra: pip install -e '.[test]'"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_import_cycle_between_modules() -> None:
    assert import_cycles("tether") == []


def test_the_cycle_finder_finds_cycles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclic_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic_pkg import b\n")
    (package / "b.py").write_text(textwrap.dedent("""\
        def late():
            from cyclic_pkg import c  # an import inside a function counts
        """))
    (package / "c.py").write_text("import cyclic_pkg.a\n")
    (package / "d.py").write_text("from cyclic_pkg import a\n")  # imports into the cycle, is not part of it
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("cyclic_pkg") == [["cyclic_pkg.a", "cyclic_pkg.b", "cyclic_pkg.c"]]


def _sources() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not any(part in p.as_posix() for part in EXEMPT)]


def test_modules_and_functions_fit_on_a_few_screens() -> None:
    too_long: list[str] = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(ROOT).as_posix()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines (at most {MAX_FUNCTION_LINES})")
    assert too_long == []


def test_every_package_folder_is_a_package() -> None:
    # setuptools' package discovery skips a folder without __init__.py: a wheel would lack it.
    for folder in sorted(p.parent for p in PACKAGE.rglob("*.py")):
        if any(part in folder.as_posix() for part in EXEMPT) or folder.name == "__pycache__":
            continue
        assert (folder / "__init__.py").is_file(), f"{folder.relative_to(ROOT)} has no __init__.py"


HEAVY = ("torch", "transformers", "accelerate", "peft", "numpy", "pandas", "pyarrow", "scipy", "sqlalchemy", "fastapi", "mlflow", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "grpo", "--help"], ["data", "--help"]])
def test_help_imports_nothing_heavy(argv: list[str]) -> None:
    code = textwrap.dedent(f"""\
        import contextlib, io, json, sys
        sys.argv = ["tether", *{argv!r}]
        from tether.cli import main
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main()
            except SystemExit:
                pass
        print(json.dumps({{"loaded": sorted({{m.split(".")[0] for m in sys.modules}}), "help": out.getvalue()}}))
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Usage: tether" in result["help"]
    assert sorted(set(result["loaded"]) & set(HEAVY)) == []


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    """A user's `pip install tether` gets a wheel, not this checkout: every module, template, static file and
    migration must be in it (a folder without __init__.py, or a data file that package-data does not name, is not)."""
    source = tmp_path / "src"  # a copy: the build leaves build/ and egg-info behind, and stale files in build/ would pass
    shutil.copytree(PACKAGE, source / "tether", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import zipfile

    [wheel] = tmp_path.glob("tether-*.whl")
    packed = {name for name in zipfile.ZipFile(wheel).namelist() if name.startswith("tether/")}
    wanted = {
        p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert sorted(wanted - packed) == []
