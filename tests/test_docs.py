"""Every example and every Python block of the README runs, and does what it says."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
README_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


def _run(*args: str, cwd: Path = ROOT) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _remembers_and_bounds_history(output: str) -> None:
    assert "[user-123] assistant: Your name is Alice." in output
    assert "[user-456] assistant: I don't know your name yet." in output
    assert "Stored history of user-123 (6 messages)" in output


def _remembers_across_a_restart_and_stores_no_plaintext(output: str) -> None:
    assert output.count("assistant: Your name is Ada.") == 1
    assert "the file holds the name in plain text: False" in output
    assert "assistant (branch): Your name is Ada." in output
    assert 'export: {"format":"chatstate.session/1","session_id":"ada"' in output


# What each example must print to show it did its job: a new example needs its entry here.
EXAMPLE_CHECKS: dict[str, Callable[[str], None]] = {
    "basic_conversation.py": _remembers_and_bounds_history,
    "private_assistant.py": _remembers_across_a_restart_and_stores_no_plaintext,
}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_runs_and_does_what_it_says(example: Path) -> None:
    assert example.name in EXAMPLE_CHECKS, f"say in EXAMPLE_CHECKS what {example.name} prints"
    EXAMPLE_CHECKS[example.name](_run(str(example)))


def test_the_readme_has_python_blocks() -> None:
    assert len(README_BLOCKS) >= 2


@pytest.mark.parametrize(
    "index",
    [  # a block that reads REDIS_URL runs against the tests' own server
        pytest.param(index, marks=pytest.mark.redis) if "REDIS_URL" in block else index
        for index, block in enumerate(README_BLOCKS)
    ],
)
def test_every_readme_block_runs(
    index: int, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = README_BLOCKS[index]
    if "REDIS_URL" in block:
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_server").url)
    if re.search(r"^class Test", block, re.MULTILINE):
        # A test module: run it with pytest, as a user would.
        (tmp_path / "test_block.py").write_text(block)
        output = _run(
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "asyncio_mode=auto",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            "-W",
            "error",
            "test_block.py",
            cwd=tmp_path,
        )
        passed = re.search(r"(\d+) passed", output)
        assert passed and int(passed.group(1)) >= 50 and "failed" not in output, output
    else:
        # A script: run as `python block.py` runs it (as __main__, in a namespace of its own, in
        # its folder), but in this process, where warnings are errors: a process of its own
        # cost 0.2 s a block, most of it importing chatstate again.
        script = tmp_path / "block.py"
        script.write_text(block)
        monkeypatch.chdir(tmp_path)
        runpy.run_path(str(script), run_name="__main__")
