"""The library's shape: packages by stage, MLflow in one of them, names imported from where
they live, steps thin, tools outside, docs/layout.md true to the tree."""
import ast
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import ROOT

PACKAGE = ROOT / "unet"
COMPAT = {"serving.py"}      # unet/serving.py: a name registered models unpickle, imported by none


def packages() -> list[Path]:
    return sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


def modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.py") if p.name != "__init__.py")


def dotted(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of each `from module import name` in a file, and (module, "") of each
    `import module`, wherever it stands (functions included); a name used as an attribute of
    an imported unet module (`pairs.Pair` after `from unet.data import pairs`) counts as
    imported from it."""
    tree = ast.parse(path.read_text())
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
            aliases |= {alias.asname or alias.name: f"{node.module}.{alias.name}"
                        for alias in node.names if node.module.startswith("unet")}
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            module = aliases[node.value.id]
            if source_of(module).is_file():           # a module, not a class or a function
                found.append((module, node.attr))
    return found


def test_steps_stay_thin():
    for path in (ROOT / "steps").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 40, f"{path.name}:{node.name} is {length} lines"


def test_a_long_library_function_says_why_it_is_one():
    """Over 50 lines of body (its docstring aside), a function's docstring gives the reason."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node) or ""
                body = node.body[1:] if doc else node.body
                length = body[-1].end_lineno - body[0].lineno + 1
                assert length <= 50 or "One function because" in doc, \
                    f"{path.relative_to(ROOT)}:{node.name} is {length} lines"

def test_no_package_but_tracking_imports_mlflow():
    """By package: every module outside unet/tracking, read (no mlflow or tracking import
    anywhere in it) and imported (nothing it imports pulls MLflow in)."""
    core = [m for p in packages() if p.name != "tracking" for m in [p / "__init__.py", *modules(p)]]
    core += [m for m in modules(PACKAGE) if m.name not in COMPAT] + [PACKAGE / "__init__.py"]
    for path in core:
        for module, _ in imports(path):
            assert not module.startswith(("mlflow", "unet.tracking")), f"{path}: {module}"
    code = (f"import sys; import {', '.join(dotted(m) for m in core)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'steps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def defined_names(path: Path) -> set[str]:
    """The names a module defines itself (not those it imports), and a package's submodules."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):          # third-party modules a test may patch (engine.torch)
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names
                      if not a.name.startswith("unet")}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    if path.name == "__init__.py":
        names |= {p.stem for p in path.parent.glob("*.py")} | {
            p.name for p in path.parent.iterdir() if (p / "__init__.py").is_file()}
    return names


def source_of(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_every_name_is_imported_from_the_module_that_defines_it():
    """No re-exports: `from unet.x.y import name` finds `name` defined in unet/x/y.py, so a
    reader goes straight to it. A name of another package that starts with _ is private."""
    files = [p for p in ROOT.glob("*/**/*.py") if p.parts[len(ROOT.parts)] in
             ("unet", "steps", "tools", "tests") and p.name not in COMPAT]
    for path in files:
        for module, name in imports(path):
            if not module.startswith("unet") or not name:
                continue
            source = source_of(module)
            assert source.is_file(), f"{path.relative_to(ROOT)}: no module {module}"
            assert name in defined_names(source), \
                f"{path.relative_to(ROOT)}: {name} is not defined in {module}"
            own = dotted(path).split(".")[:2]
            assert not name.startswith("_") or module.split(".")[:2] == own or own[0] == "tests", \
                f"{path.relative_to(ROOT)}: {module}.{name} is private to its package"


def test_each_package_face_and_docs_layout_name_every_module():
    layout = (ROOT / "docs" / "layout.md").read_text()
    listed = set(re.findall(r"`(unet/[\w/]+\.py)`", layout))
    tree = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert listed == tree, (sorted(tree - listed), sorted(listed - tree))
    for package in packages():
        face = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        named = {line.split()[0] for line in face.splitlines()[2:] if line.strip()}
        assert named == {m.stem for m in modules(package)}, package.name


def test_tools_are_outside_the_package():
    assert (ROOT / "tools" / "bench.py").is_file() and (ROOT / "tools" / "tutorial.py").is_file()
    for path in PACKAGE.rglob("*.py"):
        assert not any(m.split(".")[0] == "tools" for m, _ in imports(path)), path


def test_the_installed_package_carries_the_defaults_of_params_yaml(tmp_path):
    """`pip install .` (a wheel, not the checkout) gives `import unet` the same params.yaml."""
    source = tmp_path / "source"          # a copy: building writes build/ next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "params.yaml"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "unet", source / "unet", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    # Build with this environment's setuptools when it has one (no download), else pip's own.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation,
                    "-q", "-w", str(tmp_path / "wheel")], check=True)
    (wheel,) = (tmp_path / "wheel").glob("unet_mlflow-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True)
    code = ("import json, unet, unet.config.pipeline as c; "
            "print(json.dumps([unet.__file__, c.read_params()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")}, check=True)
    where, params = json.loads(out.stdout)
    assert where.startswith(str(tmp_path / "site"))           # not this checkout
    assert params == yaml.safe_load((ROOT / "params.yaml").read_text())
    assert not (tmp_path / "site" / "tools").exists()         # tools stay out of the package
    # Every package of the tree is in the wheel (pyproject lists them by hand).
    installed = {p.parent.name for p in (tmp_path / "site" / "unet").glob("*/__init__.py")}
    assert installed == {p.name for p in packages()}
