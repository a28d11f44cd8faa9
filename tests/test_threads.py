"""Every entry point makes OpenMP threads wait without spinning (vilbert/threads.py), unless the
environment already chose a policy; child processes inherit it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["training", "regions", "server", "export", "bench", "bootstrap"]


def _policy_after_import(package: str, env_policy: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = f"import os, {package}; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-1500:]
    return out.stdout.strip()


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_an_entry_package_sets_the_passive_wait_policy(package):
    assert _policy_after_import(package, None) == "PASSIVE"


def test_a_policy_the_environment_names_is_kept_and_spin_opt_out_sets_none():
    assert _policy_after_import("training", "ACTIVE") == "ACTIVE"
    from vilbert.threads import fair_share

    env = {"TWELVE_OMP_SPIN": "1"}
    fair_share(env)
    assert "OMP_WAIT_POLICY" not in env


def test_the_triton_launcher_passes_the_policy_to_its_child():
    from vilbert.threads import fair_share

    env: dict[str, str] = {}
    fair_share(env)
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    source = (ROOT / "export" / "triton_server.py").read_text()
    assert "fair_share(env)" in source


def test_build_steps_spin_briefly_unless_the_user_chose_a_policy():
    from vilbert.threads import build_step_env, fair_share

    ours: dict[str, str] = {"PATH": "/bin"}
    fair_share(ours)  # our passive default
    step = build_step_env(ours)
    assert "OMP_WAIT_POLICY" not in step and step["GOMP_SPINCOUNT"] == "3000" and step["PATH"] == "/bin"
    assert step["TWELVE_OMP_SPIN"] == "1"  # so the step's own fair_share() leaves it alone
    users = {"OMP_WAIT_POLICY": "ACTIVE"}
    fair_share(users)
    assert build_step_env(users) == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert _policy_after_import("training", None) == "PASSIVE"
