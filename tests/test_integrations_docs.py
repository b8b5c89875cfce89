"""The example of every page in docs/integrations/ runs, in a process of its own, on a SQLite
file and on Redis, and a second run (a new process) resumes the conversation from the store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from chatstate.testing.redis_server import RedisServer

from .conftest import kinds

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs" / "integrations").glob("*.md"))

# What each page's example prints on its first run and on a second one (a new process).
EXPECTED = {
    "llama-index.md": (
        ["asked: I am Ada.", "the prompt began: user: I am Ada.", "2 messages stored"],
        ["asked: What is my name?", "the prompt began: user: I am Ada.", "4 messages stored"],
    ),
    "pydantic-ai.md": (
        ["sent 0 messages of history", "4 messages stored"],
        ["sent 4 messages of history", "6 messages stored"],
    ),
    "langchain.md": (
        ["Nice to meet you, Ada.", "2 messages stored"],
        ["You told me: I am Ada.", "4 messages stored"],
    ),
    "openai-agents.md": (
        ["It is sunny in Paris.", "4 items stored"],
        ["Earlier you asked: What's the weather in Paris?", "6 items stored"],
    ),
}


def _example(page: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.DOTALL)
    assert len(blocks) == 1, f"{page.name}: one runnable example"
    return str(blocks[0])


def _run(script: Path, url: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CHATSTATE_URL": url},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def test_every_page_has_its_expectations() -> None:
    assert {page.name for page in PAGES} == set(EXPECTED)


@pytest.mark.slow  # a few seconds a run: the frameworks are slow to import
@pytest.mark.parametrize("kind", kinds("sqlite", "redis"))
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.stem)
def test_the_example_runs_and_resumes_in_a_new_process(
    page: Path, kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url = "sqlite:///chat.db"
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        # A database of the page's own, emptied first: the example's session ids are fixed.
        url = f"{server.url.rstrip('/')}/{PAGES.index(page) + 1}"
        with redis.Redis.from_url(url) as client:
            client.flushdb()
    script = tmp_path / "example.py"
    script.write_text(_example(page))
    first, second = EXPECTED[page.name]
    assert _run(script, url) == first
    assert _run(script, url) == second
