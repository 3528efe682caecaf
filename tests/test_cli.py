"""The command line: JSON output, chat, convert, and one-line errors with a non-zero exit status."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import llava_interleave
from llava_interleave import commands
from llava_interleave.cli import COMMANDS, build_parser, main
from llava_interleave.testing import make_checkpoint, tiny_config


def _generate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_parser_and_dispatch_table_agree():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    names = {name for name in subparsers.choices if name != "data"}
    data = next(a for a in subparsers.choices["data"]._actions if a.dest == "data_command")
    assert names | {f"data {name}" for name in data.choices} == set(COMMANDS)


def test_generate_json_matches_api(capsys, original_checkpoint, image_files):
    code, out, _ = _generate(
        capsys, "--model", str(original_checkpoint), "--image", str(image_files[0]), "--image", str(image_files[1]),
        "--prompt", "Compare <image> with <image>.", "--max-new-tokens", "7", "--json",
    )
    assert code == 0
    record = json.loads(out)
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    expected = pipe.generate("Compare <image> with <image>.", images=image_files[:2], max_new_tokens=7)
    assert record["token_ids"] == expected.token_ids and record["text"] == expected.text
    assert record["prompt_tokens"] == expected.prompt_tokens


def test_generate_views_and_text_stream(capsys, original_checkpoint, image_files):
    code, out, _ = _generate(
        capsys, "--model", str(original_checkpoint), "--views", *map(str, image_files[:3]),
        "--prompt", "How many chairs?", "--max-new-tokens", "5",
    )
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    assert code == 0
    assert out == pipe.generate("How many chairs?", views=image_files[:3], max_new_tokens=5).text + "\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "/nonexistent/a.png", "--prompt", "x"], "/nonexistent/a.png"),
        (["--image", "{img}", "--prompt", "<image> and <image>"], "2 <image> slot"),
        (["--video", "/nonexistent/v.mp4", "--prompt", "x"], "/nonexistent/v.mp4"),
    ],
)
def test_bad_inputs_give_one_line_errors(capsys, original_checkpoint, image_files, args, message):
    args = [a.replace("{img}", str(image_files[0])) for a in args]
    code, out, err = _generate(capsys, "--model", str(original_checkpoint), *args)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_corrupt_image(capsys, original_checkpoint, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    code, _, err = _generate(capsys, "--model", str(original_checkpoint), "--image", str(bad), "--prompt", "x")
    assert code == 1 and str(bad) in err and err.count("\n") == 1


def test_prompt_longer_than_context(capsys, tokenizer, tmp_path, image_files):
    config = tiny_config(tokenizer, "original")
    short = replace(config, max_length=40, text=replace(config.text, max_position_embeddings=40))
    ckpt = make_checkpoint(tmp_path / "short", short, tokenizer)
    code, _, err = _generate(capsys, "--model", str(ckpt), "--image", str(image_files[0]), "--image", str(image_files[1]), "--prompt", "x")
    assert code == 1 and "tokens after expanding images" in err and "context of 40 tokens" in err


def test_not_a_checkpoint(capsys, tmp_path):
    code, _, err = _generate(capsys, "--model", str(tmp_path), "--prompt", "x")
    assert code == 1 and "no config.json" in err
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    code, _, err = _generate(capsys, "--model", str(tmp_path), "--prompt", "x")
    assert code == 1 and "model_type 'bert'" in err


def test_hub_id_without_network_says_so(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _generate(capsys, "--model", "nobody/no-such-model-xyz", "--prompt", "x")
    assert code == 1 and "could not be fetched from the hub" in err and err.count("\n") == 1


def test_subprocess_error_has_no_traceback(original_checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "llava_interleave.cli", "generate", "--model", str(original_checkpoint), "--image", "missing.png", "--prompt", "x"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr and "missing.png" in result.stderr


def test_chat_session(original_checkpoint, image_files):
    args = build_parser().parse_args(["chat", "--model", str(original_checkpoint), "--max-new-tokens", "4"])
    lines = f"/image {image_files[0]} {image_files[1]}\nCompare them.\n/image /nope.png\nAnd now?\n/quit\n"
    out = io.StringIO()
    assert commands.chat(args, io.StringIO(lines), out) == 0
    text = out.getvalue()
    assert "attached 2 item(s)" in text and "error: " in text and "/nope.png" in text
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    first = pipe.chat([{"role": "user", "content": [{"type": "image", "image": image_files[0]}, {"type": "image", "image": image_files[1]}, "Compare them."]}], max_new_tokens=4)
    assert f"> {first}\n" in text


def test_convert_round_trip_and_transformers_loads_it(capsys, original_checkpoint, tmp_path):
    assert main(["convert", str(original_checkpoint), str(tmp_path / "hf"), "--to", "hf"]) == 0
    out = capsys.readouterr().out
    assert "image_newline" in out and "dropped" in out
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "orig"), "--to", "original"]) == 0
    first, second = load_file(original_checkpoint / "model.safetensors"), load_file(tmp_path / "orig" / "model.safetensors")
    assert set(second) == set(first) - {"model.image_newline"}
    for key, value in second.items():
        assert torch.equal(value, first[key]), key
    from transformers import LlavaForConditionalGeneration

    ref = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf")
    ours = llava_interleave.load(tmp_path / "hf", device="cpu").model
    ids = torch.tensor([[5, 6, 7, 8]])  # plain text tokens, no <image>
    with torch.no_grad():
        torch.testing.assert_close(ref(input_ids=ids).logits, ours(ids).logits, atol=1e-5, rtol=0)
