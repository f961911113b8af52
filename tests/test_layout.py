"""The library's shape: module and function sizes, the torch-only core, tools outside it."""
import ast
import importlib.util
import json
import shutil
import subprocess
import sys

import yaml

from conftest import ROOT


def test_modules_stay_readable_and_steps_stay_thin():
    for path in list((ROOT / "unet").rglob("*.py")) + list((ROOT / "steps").glob("*.py")):
        lines = path.read_text().count("\n")
        assert lines <= 300, f"{path.relative_to(ROOT)}: {lines} lines"
    for path in (ROOT / "steps").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 40, f"{path.name}:{node.name} is {length} lines"


def test_the_core_imports_without_mlflow():
    code = ("import sys, unet.model, unet.engine, unet.data, unet.planning, unet.predict, "
            "unet.fitting, unet.evaluation, unet.baselines, unet.rle, unet.streaming, "
            "unet.folder, unet.label_quality; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'steps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_tools_are_outside_the_package():
    assert not (ROOT / "unet" / "bench.py").exists() and not (ROOT / "unet" / "tutorial.py").exists()
    assert (ROOT / "tools" / "bench.py").is_file() and (ROOT / "tools" / "tutorial.py").is_file()
    for path in (ROOT / "unet").rglob("*.py"):
        assert "tools" not in {getattr(n, "module", None) for n in ast.walk(ast.parse(path.read_text()))
                               if isinstance(n, ast.ImportFrom)}, path


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
    code = ("import json, unet, unet.config as c; "
            "print(json.dumps([unet.__file__, c.read_params()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")}, check=True)
    where, params = json.loads(out.stdout)
    assert where.startswith(str(tmp_path / "site"))           # not this checkout
    assert params == yaml.safe_load((ROOT / "params.yaml").read_text())
    assert not (tmp_path / "site" / "tools").exists()         # tools stay out of the package
