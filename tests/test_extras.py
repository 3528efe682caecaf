"""Optional dependencies stay optional: the core commands run with every extra's package hidden, and a
feature that needs one says in one line which extra to install.

The test extras install all of them, so only hiding them shows what a plain `pip install llava-interleave`
user meets (a plain `train` once died at export importing peft, which it never used).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from llava_interleave.data.synth import write_synthetic

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]

HIDDEN = ("peft", "pyarrow", "tensorboard", "rouge", "openai", "playwright")
# `None` in sys.modules makes `import x` fail and `importlib.util.find_spec(x)` answer None, as when the
# package is not installed (transformers asks find_spec before touching peft).
HIDE = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in HIDDEN)
CLI = HIDE + "from llava_interleave.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`llava-interleave ARGS` in a fresh interpreter that cannot import the hidden packages."""
    return subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, 16, seed=3, bench_n=4, image_size=48)
    return out


def test_the_packages_are_really_hidden():
    for name in HIDDEN:
        result = subprocess.run([sys.executable, "-c", HIDE + f"import {name}"], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr, name


def test_generate(original_checkpoint, image_files):
    result = cli("generate", "--model", str(original_checkpoint), "--image", str(image_files[0]), "--prompt", "What?",
                 "--max-new-tokens", "3", "--json")
    assert result.returncode == 0, result.stderr
    assert "token_ids" in json.loads(result.stdout)


def _train(synth: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("train", f"data.path={synth / 'train.json'}", f"out_dir={out}", "model.preset=tiny", "batch_size=2",
               "max_steps=1", "progress=false", "data.max_length=2048", "data.num_frames=4", *extra)


def test_plain_train_runs_to_export(synth, tmp_path):
    result = _train(synth, tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("setting, extra", [("lora.enabled=true", "lora"), ("tensorboard=true", "tensorboard")])
def test_a_feature_without_its_package_names_the_extra(synth, tmp_path, setting, extra):
    result = _train(synth, tmp_path / "run", setting)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"pip install 'llava-interleave[{extra}]'" in last


def test_eval_on_a_json_bench(original_checkpoint, synth, tmp_path):
    result = cli("eval", "--model", str(original_checkpoint), "--bench", str(synth / "bench.json"), "--out",
                 str(tmp_path / "eval"), "--limit", "2", "--max-new-tokens", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "eval" / "report.md").is_file()


def test_serve_answers(original_checkpoint):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = ["serve", "--model", str(original_checkpoint), "--port", str(port)]
    server = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _models(port, server)["data"][0]["object"] == "model"
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert "Traceback" not in err


def _models(port: int, server: subprocess.Popen, timeout: float = 300) -> dict:
    """GET /v1/models once the server is up (it loads the model first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
                return json.load(response)
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the server did not answer (exit status {server.poll()})")
