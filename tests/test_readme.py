"""The README stays truthful: its main command and every example in it run (on a tiny random model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def _cli_lines() -> list[str]:
    return [line for block in _blocks("bash") for line in block.splitlines() if line.startswith(("llava-interleave ", "torchrun "))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One folder for all examples, in README order: later lines use what earlier ones wrote."""
    path = tmp_path_factory.mktemp("readme")
    for folder in ("examples", "recipes"):
        (path / folder).symlink_to(ROOT / folder)
    return path


def _env(model: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "MODEL": str(model), "PATH": bin_dir + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1"}


def test_readme_has_the_examples():
    assert len(_cli_lines()) >= 6 and len(_blocks("python")) == 1


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("line", _cli_lines())
def test_cli_example_runs(line, original_checkpoint, workdir):
    result = subprocess.run(["bash", "-c", line], cwd=workdir, env=_env(original_checkpoint), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


@pytest.mark.slow
def test_python_example_runs(original_checkpoint, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    exec(compile(_blocks("python")[0], "README.md", "exec"), {"MODEL": str(original_checkpoint)})
    assert capsys.readouterr().out.strip()


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.skipif(not (ROOT / ".venv").is_dir(), reason="run.sh works on the project's .venv, made by test.sh")
def test_main_command_runs():
    result = subprocess.run([str(ROOT / "run.sh")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
