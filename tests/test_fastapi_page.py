"""examples/fastapi_app's chat page in a real browser: Debian's chromium, headless, driven by
playwright (the system's browser through its executable path: playwright downloads none)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from examples.fastapi_app import app as example
from tests.live_server import serve

pytestmark = pytest.mark.browser


def _chromium() -> str:
    # A missing browser fails the test: `make test` installs Debian's (`make chromium`).
    path = os.environ.get("CHATSTATE_CHROMIUM") or shutil.which("chromium")
    assert path, "no chromium on PATH: `make chromium` installs Debian's (apt-get install chromium)"
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=_chromium(), headless=True)
        try:
            yield browser
        finally:
            await browser.close()


async def _send(page: Page, text: str) -> None:
    await page.locator("#message").fill(text)
    await page.locator("#message").press("Enter")


async def test_type_a_message_see_the_reply_reload_see_the_history(
    browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The app as `uvicorn examples.fastapi_app.app:app` serves it, on the offline model.
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    async with serve(example.app) as url:
        page = await browser.new_page()
        await page.goto(f"{url}/?session=alice")
        await expect(page.locator("body")).to_have_attribute("data-loaded", "true")
        log = page.locator("#log li")
        await expect(log).to_have_count(0)

        await _send(page, "My name is Alice")
        await expect(log.nth(0)).to_have_text("My name is Alice")
        await expect(log.nth(1)).to_have_text("Nice to meet you, Alice!")
        await expect(log.nth(1)).to_have_attribute("data-state", "done")
        await _send(page, "What's my name?")
        await expect(log.nth(3)).to_have_text("Your name is Alice.")

        await page.reload()
        await expect(page.locator("body")).to_have_attribute("data-loaded", "true")
        await expect(log).to_have_text(
            [
                "My name is Alice",
                "Nice to meet you, Alice!",
                "What's my name?",
                "Your name is Alice.",
            ]
        )
        await expect(page.locator("#log li.user")).to_have_count(2)
        await page.close()
