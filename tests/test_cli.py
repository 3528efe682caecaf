"""The command line: parser and table agree, JSON output, chat, convert, one-line errors with a non-zero exit."""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
import torch
from safetensors.torch import load_file

import llava_interleave
from llava_interleave.assets.tiny import make_checkpoint, tiny_config
from llava_interleave.cli import COMMANDS, build_parser, main, options
from llava_interleave.cli.run import chat
from llava_interleave.config import ImageAspect, MultiAspect, VideoPooling
from llava_interleave.data.templates import TEMPLATES
from llava_interleave.engine import SamplingConfig
from llava_interleave.model.checkpoint import DTYPES

TOP_LEVEL = ["generate", "chat", "demo", "convert", "data", "train", "dpo", "plot", "eval", "score", "serve"]
DATA = ["validate", "stats", "synth"]
ROOT_MODULES = {"__init__.py", "api.py", "config.py", "errors.py", "engine.py"}


def _generate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["generate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _parsers(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every parser reachable from `parser`, groups (like `data`) and their verbs alike, by the words that reach it."""
    found = {words: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found |= _parsers(child, (*words, name))
    return found


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def test_parser_and_dispatch_table_agree():
    commands = {" ".join(words) for words, parser in _parsers(build_parser()).items() if not _is_group(parser)}
    assert commands == set(COMMANDS)


@pytest.mark.parametrize("group, names", [([], TOP_LEVEL), (["data"], DATA)])
def test_help_lists_every_command(capsys, group, names):
    with pytest.raises(SystemExit) as done:
        main([*group, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    children = {words[-1] for words in _parsers(build_parser()) if words and list(words[:-1]) == group}
    assert children == set(names)
    for name in names:
        assert re.search(rf"^ +{name}( |$)", out, re.MULTILINE), name


def test_choices_come_from_the_code():
    """--template, --dtype, --video-pooling and the aspect rules offer the same choices wherever they appear."""
    expected = {"template": list(TEMPLATES), "dtype": list(DTYPES), "video_pooling": list(get_args(VideoPooling)),
                "image_aspect": list(get_args(ImageAspect)), "multi_aspect": list(get_args(MultiAspect))}
    seen = set()
    for words, parser in _parsers(build_parser()).items():
        for action in parser._actions:
            if action.dest in expected:
                assert list(action.choices) == expected[action.dest], (words, action.dest)
                seen.add(action.dest)
    assert seen == set(expected)


@pytest.mark.parametrize("flags, aspects", [([], ("anyres", "pad")), (["--multi-aspect", "squash"], ("anyres", "squash")),
                                            (["--image-aspect", "pad"], ("pad", "pad"))])
def test_aspect_options_override_the_checkpoint(original_checkpoint, flags, aspects):
    args = build_parser().parse_args(["generate", "--model", str(original_checkpoint), "--prompt", "x", *flags])
    proc = options.load_pipeline(args).config.processor
    assert (proc.image_aspect, proc.multi_aspect) == aspects


def test_package_root_holds_only_the_core_modules():
    root = Path(llava_interleave.__file__).parent
    assert {path.name for path in root.glob("*.py")} <= ROOT_MODULES


def test_generate_json_matches_api(capsys, original_checkpoint, image_files):
    code, out, _ = _generate(
        capsys, "--model", str(original_checkpoint), "--image", str(image_files[0]), "--image", str(image_files[1]),
        "--prompt", "Compare <image> with <image>.", "--max-new-tokens", "7", "--json",
    )
    assert code == 0
    record = json.loads(out)
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    expected = pipe.generate("Compare <image> with <image>.", images=image_files[:2], sampling=SamplingConfig(max_new_tokens=7))
    assert record["token_ids"] == expected.token_ids and record["text"] == expected.text
    assert record["prompt_tokens"] == expected.prompt_tokens


def test_generate_views_and_text_stream(capsys, original_checkpoint, image_files):
    code, out, _ = _generate(
        capsys, "--model", str(original_checkpoint), "--views", *map(str, image_files[:3]),
        "--prompt", "How many chairs?", "--max-new-tokens", "5",
    )
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    assert code == 0
    assert out == pipe.generate("How many chairs?", views=image_files[:3], sampling=SamplingConfig(max_new_tokens=5)).text + "\n"


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


@pytest.mark.slow
@pytest.mark.subprocess
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
    assert chat(args, io.StringIO(lines), out) == 0
    text = out.getvalue()
    assert "attached 2 item(s)" in text and "error: " in text and "/nope.png" in text
    pipe = llava_interleave.load(original_checkpoint, device="cpu")
    first = pipe.chat([{"role": "user", "content": [{"type": "image", "image": image_files[0]}, {"type": "image", "image": image_files[1]}, "Compare them."]}], SamplingConfig(max_new_tokens=4))
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


# ------------------------------------------------------------------------------------- bad arguments
PACKAGE_DIR = str(Path(llava_interleave.__file__).parent)
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.fixture(scope="module")
def broken_checkpoints(tmp_path_factory, original_checkpoint) -> dict[str, Path]:
    """Copies of the tiny checkpoint, each damaged in one way a user could meet."""
    root = tmp_path_factory.mktemp("broken")

    def copy(name: str, **config: object) -> Path:
        path = root / name
        shutil.copytree(original_checkpoint, path)
        raw = json.loads((path / "config.json").read_text())
        (path / "config.json").write_text(json.dumps({**raw, **config}))
        return path

    truncated = copy("truncated") / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    return {"negative": copy("negative", hidden_size=-4), "heads": copy("heads", num_attention_heads=3),
            "shapes": copy("shapes", hidden_size=128), "truncated": truncated.parent}


BAD_ARGUMENTS = [
    (["--frames", "-1"], "argument --frames: must be a whole number in 1..1024, got '-1'"),
    (["--frames", "0"], "argument --frames: must be a whole number in 1..1024"),
    (["--frames", "100000"], "argument --frames: must be a whole number in 1..1024"),
    (["--fps", "0"], "argument --fps: must be a number > 0, got '0'"),
    (["--fps", "nan"], "argument --fps: must be a number > 0"),
    (["--max-new-tokens", "-5"], "max_new_tokens must be a whole number of at least 1, got -5"),
    (["--max-new-tokens", "0"], "max_new_tokens must be a whole number of at least 1, got 0"),
    (["--temperature", "1", "--top-p", "0"], "top_p must be in (0, 1], got 0.0"),
    (["--top-p", "5"], "top_p must be in (0, 1], got 5.0"),
    (["--temperature", "nan"], "temperature must be a finite number >= 0"),
    (["--temperature", "-1"], "temperature must be a finite number >= 0"),
    pytest.param(["--device", "cuda"], "no CUDA GPU is available", marks=NO_GPU),
    (["--device", "cuda:99"], "device 'cuda:99'"),
    (["--device", "bogus"], "unknown device 'bogus': use cpu, cuda, cuda:N or mps"),
    (["--model", "{negative}"], "config.json: impossible text config: hidden_size must be a whole number >= 1, got -4"),
    (["--model", "{heads}"], "config.json: impossible text config: hidden_size 64 / num_heads 3"),
    (["--model", "{shapes}"], "weight shapes differ from config.json"),
    (["--model", "{truncated}"], "model.safetensors (truncated or corrupt?)"),
    (["--prompt-file", "/nonexistent/prompt.txt"], "cannot read the prompt from /nonexistent/prompt.txt"),
]


@pytest.mark.parametrize("args, message", BAD_ARGUMENTS)
def test_bad_argument_is_one_line_and_non_zero(capsys, original_checkpoint, broken_checkpoints, args, message):
    """Range errors are argparse's (exit 2), the rest `InterleaveError`s (exit 1): one line each, no traceback."""
    args = [a.format(**broken_checkpoints) for a in args]
    prompt = [] if "--prompt-file" in args else ["--prompt", "x"]
    model = [] if "--model" in args else ["--model", str(original_checkpoint)]
    try:
        code = main(["generate", *model, *prompt, *args])
    except SystemExit as done:
        code = done.code
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    assert message in err and err.count("\n") == 1 and "Traceback" not in err and PACKAGE_DIR not in err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--bench", "b.json", "--out", "o", "--frames", "2000"], "argument --frames: must be a whole number in 1..1024"),
    (["eval", "--bench", "b.json", "--out", "o", "--device", "bogus"], "unknown device 'bogus'"),
    (["serve", "--device", "bogus"], "unknown device 'bogus'"),
    (["serve", "--port", "70000"], "argument --port: must be a whole number in 0..65535"),
    (["serve", "--timeout", "nan"], "argument --timeout: must be a number > 0"),
    (["serve", "--batching", "dynamic"], "argument --batching: invalid choice: 'dynamic'"),
    (["chat", "--device", "cuda:99"], "device 'cuda:99'"),
])
def test_other_commands_check_their_arguments_as_parsed(capsys, argv, message):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and message in err and err.count("\n") == 1


def test_settings_are_checked_before_the_model_is_loaded(capsys):
    code, _, err = _generate(capsys, "--model", "/nonexistent/model", "--prompt", "x", "--max-new-tokens", "0")
    assert code == 1 and "max_new_tokens" in err and "/nonexistent/model" not in err


@pytest.mark.subprocess
def test_bad_arguments_in_a_subprocess_show_no_traceback(original_checkpoint, broken_checkpoints):
    for args in (["--frames", "0"], ["--model", str(broken_checkpoints["truncated"])]):
        result = subprocess.run(
            [sys.executable, "-m", "llava_interleave.cli", "generate", "--model", str(original_checkpoint), "--prompt", "x", *args],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode in (1, 2) and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, args


def test_chat_video_frames_must_be_a_number(original_checkpoint, image_files):
    args = build_parser().parse_args(["chat", "--model", str(original_checkpoint), "--max-new-tokens", "2"])
    out = io.StringIO()
    assert chat(args, io.StringIO(f"/video {image_files[0].parent} many\n/video {image_files[0].parent} 0\n/quit\n"), out) == 0
    assert out.getvalue().count("error: /video FRAMES must be a whole number in 1..1024") == 2


# ------------------------------------------------------------------------------- prompts from files
def test_prompt_from_a_file_or_stdin(capsys, monkeypatch, original_checkpoint, image_files, tmp_path):
    question = "Compare <image> with <image>."
    common = ["--model", str(original_checkpoint), "--image", str(image_files[0]), "--image", str(image_files[1]),
              "--max-new-tokens", "5", "--json"]
    expected = _generate(capsys, *common, "--prompt", question)[1]
    (tmp_path / "q.txt").write_text(question + "\n")
    assert _generate(capsys, *common, "--prompt-file", str(tmp_path / "q.txt"))[1] == expected
    for flag in ("--prompt", "--prompt-file"):
        monkeypatch.setattr(sys, "stdin", io.StringIO(question + "\n"))
        assert _generate(capsys, *common, flag, "-")[1] == expected


def test_a_200k_character_prompt_file_reaches_the_model(capsys, original_checkpoint, tmp_path):
    """Too long for one command-line argument, not for a file: it gets as far as the context check."""
    long = tmp_path / "long.txt"
    long.write_text("x" * 200_000)
    code, _, err = _generate(capsys, "--model", str(original_checkpoint), "--prompt-file", str(long))
    assert code == 1 and "tokens after expanding images, over the model's context of 4096 tokens" in err


def test_prompt_and_prompt_file_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as done:
        main(["generate", "--prompt", "x", "--prompt-file", "q.txt"])
    assert done.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- broken pipes
@pytest.mark.subprocess
@pytest.mark.parametrize("command", [["data", "synth", "--out", "{tmp}", "--n", "12"],
                                     ["generate", "--model", "{model}", "--prompt", "x", "--max-new-tokens", "8"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(command, original_checkpoint, tmp_path):
    """`... | head -1`: the reader is gone before the first write; no BrokenPipeError traceback, exit 0 or 141."""
    argv = [a.format(tmp=tmp_path / "synth", model=original_checkpoint) for a in command]
    child = subprocess.Popen([sys.executable, "-m", "llava_interleave.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait(timeout=120) in (0, 141) and err == ""
