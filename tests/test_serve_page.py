"""The chat page in headless Chromium: upload two images, ask, see the streamed answer and the history.

The answer shown must equal the pipeline's own greedy answer for the same images and question, so the page
must have sent both images, in order, with the text. Uses the system Chromium (no browser download).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from llava_interleave.api import load
from llava_interleave.engine import SamplingConfig
from llava_interleave.serve.app import create_app
from llava_interleave.serve.settings import ServeSettings

from .conftest import random_image
from .live_server import running

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                             "/usr/bin/chromium") if p and Path(p).is_file()), None)
NO_CHROMIUM = "no chromium binary (apt-get install chromium); the browser test needs one"
pytestmark = [pytest.mark.browser, pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)]

QUESTION = "What differs between <image> and <image>?"


def _screenshot(page, tmp_path: Path) -> None:
    shot = tmp_path / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("ARTIFACTS_DIR"):
        Path(os.environ["ARTIFACTS_DIR"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["ARTIFACTS_DIR"]) / shot.name)


def test_two_images_and_a_question_get_a_streamed_answer(original_checkpoint, tmp_path):
    pipe = load(original_checkpoint)
    paths = []
    for i, size in enumerate([(48, 32), (32, 48)]):
        paths.append(tmp_path / f"upload{i}.png")
        random_image(20 + i, size).save(paths[-1])
    first = [{"role": "user", "content": [QUESTION, *(Image.open(p) for p in paths)]}]
    expected = pipe.chat(first, SamplingConfig(max_new_tokens=12))
    follow_up = pipe.chat([*first, {"role": "assistant", "content": expected}, {"role": "user", "content": "And the first one?"}],
                          SamplingConfig(max_new_tokens=12))
    with running(create_app(pipe, ServeSettings("tiny"))) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            sync_api.expect(page.locator("#model")).to_have_text("tiny")
            page.fill("#max-tokens", "12")
            page.set_input_files("#files", [str(p) for p in paths])
            sync_api.expect(page.locator("#pending img")).to_have_count(2)
            page.fill("#prompt", QUESTION)
            page.click("#send")
            answer = page.locator(".msg.assistant").last
            sync_api.expect(answer).to_have_attribute("data-state", "done", timeout=60_000)
            _screenshot(page, tmp_path)
            assert answer.locator(".text").text_content() == expected and expected
            sync_api.expect(page.locator(".msg.user").last.locator("img")).to_have_count(2)
            sync_api.expect(page.locator("#pending img")).to_have_count(0)

            page.fill("#prompt", "And the first one?")  # a second turn carries the history with its images
            page.press("#prompt", "Enter")
            sync_api.expect(page.locator(".msg.assistant")).to_have_count(2)
            sync_api.expect(page.locator(".msg.assistant").last).to_have_attribute("data-state", "done", timeout=60_000)
            assert page.locator(".msg.assistant").last.locator(".text").text_content() == follow_up
            _screenshot(page, tmp_path)
        finally:
            browser.close()
