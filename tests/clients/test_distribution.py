"""The SDK and CLI stand alone: `pip install ./clients` (the `twelve-in-one-client` distribution)
brings httpx and nothing of the model, and the package imports nothing but the standard library,
httpx and itself."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "clients"
HEAVY = ("torch", "numpy", "vilbert", "server", "regions", "training", "PIL", "pydantic")


def top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_imports_only_the_standard_library_and_httpx():
    files = sorted(CLIENTS.glob("*.py"))
    assert {p.name for p in files} == {"__init__.py", "__main__.py", "sdk.py"}
    used = set().union(*(top_level_imports(p) for p in files))
    assert used - sys.stdlib_module_names == {"clients", "httpx"}, used


def test_the_distribution_declares_httpx_only_and_ships_the_package_as_clients():
    meta = tomllib.loads((CLIENTS / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "twelve-in-one-client"
    assert [d.split(">")[0].split("=")[0] for d in meta["project"]["dependencies"]] == ["httpx"]
    assert meta["tool"]["setuptools"]["package-dir"] == {"clients": "."}
    assert meta["project"]["scripts"] == {"twelve-in-one": "clients.__main__:main"}
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert main["project"]["version"] == meta["project"]["version"]


def test_cli_runs_with_the_model_packages_blocked():
    """In this environment, with torch & co. made unimportable, the CLI still parses and helps."""
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}: sys.modules[name] = None\n"
        "import clients, clients.sdk\n"
        "from clients.__main__ import build_parser, main\n"
        "args = build_parser().parse_args(['verify', 'a.png', 'b.png', 'two squares', '--dataset', 'x'])\n"
        "assert args.images == ['a.png', 'b.png'] and args.statement == 'two squares'\n"
        "main(['--help'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0 and "images first, text last" in out.stdout, out.stderr


@pytest.mark.slow
def test_pip_install_clients_into_a_clean_venv(tmp_path, live_url, pngs):
    """A fresh venv (no system site packages), `pip install ./clients`, then the SDK and the CLI there,
    against the tiny gateway: torch is neither installed nor imported."""
    src = tmp_path / "src"
    # A copy of the folder, so the in-tree build (clients/build) stays out of the working tree.
    skip = shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    shutil.copytree(CLIENTS, src / "clients", ignore=skip)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "./clients"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    def run(*args: str) -> subprocess.CompletedProcess:
        # cwd: an empty folder, so nothing of the repository is importable by accident.
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=120)

    probe = run(
        str(python),
        "-c",
        "import importlib.util, json, sys\n"
        "import clients, clients.__main__\n"
        "from clients import AsyncClient, Client\n"
        f"print(json.dumps({{'file': clients.__file__, 'loaded': sorted(set({HEAVY!r}) & set(sys.modules)),"
        f" 'findable': [n for n in {HEAVY!r} if importlib.util.find_spec(n)]}}))",
    )
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen["file"].startswith(str(venv)), seen  # the installed copy, not the repository's
    assert seen["loaded"] == [] and seen["findable"] == [], seen  # no torch, numpy, vilbert, pydantic…

    for helper in ([str(python), "-m", "clients", "--help"], [str(venv / "bin" / "twelve-in-one"), "--help"]):
        out = run(*helper)
        assert out.returncode == 0 and "vqa" in out.stdout and "verify" in out.stdout, out.stderr

    image = tmp_path / "work" / "scene.png"
    image.write_bytes(pngs[0])
    cli = [str(venv / "bin" / "twelve-in-one"), "--url", live_url]
    out = run(*cli, "tasks")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 12 and "snli_ve*" in out.stdout
    out = run(*cli, "--json", "vqa", str(image), "what colour?", "--dataset", "gqa")
    assert out.returncode == 0 and json.loads(out.stdout)["task"] == "gqa", out.stderr
    out = run(*cli, "vqa", str(image), "what colour?", "--dataset", "okvqa")
    assert out.returncode == 1 and out.stderr.startswith("error: unknown dataset 'okvqa' for vqa")
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
