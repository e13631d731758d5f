"""scripts/setup_env.sh: the one command that installs either stack right (the GPU path builds
DeepSpeed without build isolation, as the CPU path does; the [gpu] extra leaves DeepSpeed out so that
a plain `pip install '.[gpu]'` cannot build it against a torch fetched into an isolated build)."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_unknown_option_is_a_usage_error_before_anything_is_installed(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "setup_env.sh"), "--cuda"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"EMO_R3_VENV": str(tmp_path / "venv"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2 and "usage" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_no_extra_builds_deepspeed_in_isolation_and_the_script_builds_it_for_both_stacks():
    extras = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    assert '"deepspeed' not in extras
    script = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert 'install -e "$ROOT[$STACK,dev]"' in script
    assert '--no-build-isolation "deepspeed==' in script
