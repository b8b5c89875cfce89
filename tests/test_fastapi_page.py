"""examples/fastapi_app's chat page in a real browser: Debian's chromium, headless, driven by
playwright (the system's browser through its executable path: playwright downloads none)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from examples.fastapi_app import app as example
from tests.gated_model import GatedModel
from tests.live_server import serve

# One browser for the module (its start is most of a test's time), in the module's event loop.
pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]


def _chromium() -> str:
    # A missing browser fails the test: `make test` installs Debian's (`make chromium`).
    path = os.environ.get("CHATSTATE_CHROMIUM") or shutil.which("chromium")
    assert path, "no chromium on PATH: `make chromium` installs Debian's (apt-get install chromium)"
    return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=_chromium(), headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def _open(browser: Browser, url: str) -> Page:
    context = await browser.new_context()  # its own storage: a test's session is its own
    page = await context.new_page()
    await page.goto(url)
    await _loaded(page)
    return page


async def _loaded(page: Page) -> None:
    await expect(page.locator("body")).to_have_attribute("data-loaded", "true")


async def _send(page: Page, text: str) -> None:
    await page.locator("#message").fill(text)
    await page.locator("#message").press("Enter")


async def test_type_a_message_see_the_reply_stream_in_reload_see_the_history(
    browser: Browser,
) -> None:
    with GatedModel() as model:
        async with serve(example.create_app("memory://", model)) as url:
            page = await _open(browser, f"{url}/?session=alice")
            log = page.locator("#log li")
            await expect(log).to_have_count(0)

            await _send(page, "Tell me a story")
            await expect(log.nth(0)).to_have_text("Tell me a story")
            reply = log.nth(1)
            # Each piece shows while the model has not written the next one yet.
            await model.write("Once ")
            await expect(reply).to_have_text("Once")
            await expect(reply).to_have_attribute("data-state", "streaming")
            await model.write("upon a ")
            await expect(reply).to_have_text("Once upon a")
            await model.write("time.")
            await expect(reply).to_have_text("Once upon a time.")
            await expect(reply).to_have_attribute("data-state", "streaming")
            await model.finish()
            await expect(reply).to_have_attribute("data-state", "done")

            await page.reload()
            await _loaded(page)
            await expect(log).to_have_text(["Tell me a story", "Once upon a time."])
            await expect(page.locator("#log li.user")).to_have_count(1)
            await expect(page.locator("#log li.assistant")).to_have_count(1)


async def test_a_reply_cut_off_by_a_reload_is_kept_and_marked(browser: Browser) -> None:
    with GatedModel() as model:
        async with serve(example.create_app("memory://", model)) as url:
            page = await _open(browser, f"{url}/?session=bob")
            log = page.locator("#log li")
            await _send(page, "Tell me a story")
            await model.write("Once ")
            await expect(log.nth(1)).to_have_text("Once")
            await page.reload()  # mid-reply: the browser drops the stream
            await _loaded(page)
            # The next turn waits for the cut-off one to be stored (the session's lock).
            await _send(page, "Go on")
            await model.write("upon a time.")
            await model.finish()
            await expect(log.last).to_have_attribute("data-state", "done")
            await page.reload()
            await _loaded(page)
            await expect(log).to_have_text(["Tell me a story", "Once", "Go on", "upon a time."])
            await expect(page.locator("#log li.interrupted")).to_have_text(["Once"])


async def test_a_tool_turn_on_the_page_as_the_app_runs_by_default(
    browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The app as `uvicorn examples.fastapi_app.app:app` serves it, on the offline model.
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    async with serve(example.app) as url:
        page = await _open(browser, f"{url}/?session=carol")
        log = page.locator("#log li")
        await _send(page, "My name is Carol")
        await expect(log.nth(1)).to_have_text("Nice to meet you, Carol!")
        await _send(page, "calculate 6 * 7")
        shown = [
            "My name is Carol",
            "Nice to meet you, Carol!",
            "calculate 6 * 7",
            'calls calculate({"expression": "6 * 7"})',
            "tool result: 42",
            "The answer is 42.",
        ]
        await expect(log).to_have_text(shown)
        await expect(log.last).to_have_attribute("data-state", "done")
        await page.reload()
        await _loaded(page)
        await expect(log).to_have_text(shown)
