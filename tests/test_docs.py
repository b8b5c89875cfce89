"""Every example, every Python block of the README and of the docs runs, and does what it says.

A block that cannot run here (it names servers that the tests do not have) is marked, on the line
above its fence, with ``<!-- not run: why -->``; such blocks must be few, and they still compile.
A block that reads ``REDIS_URL``, ``REDIS_CLUSTER_URL`` or ``POSTGRES_URL`` runs against the
tests' own server. The pages of docs/integrations/ have their example run, in processes of their
own, by tests/test_integrations_docs.py.
"""

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
DOCS = sorted((ROOT / "docs").rglob("*.md"))
INTEGRATION_PAGES = ROOT / "docs" / "integrations"  # run by tests/test_integrations_docs.py
_BLOCK = re.compile(
    r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```python\n(?P<code>.*?)```", re.DOTALL
)
MAX_NOT_RUN = 3


def _blocks(path: Path) -> list[tuple[str, str | None]]:
    """The Python blocks of a page: each one's code, and why it is not run (None: it runs)."""
    return [(found["code"], found["why"]) for found in _BLOCK.finditer(path.read_text())]


BLOCKS = {
    f"{path.relative_to(ROOT)}#{index + 1}": (code, why)
    for path in [ROOT / "README.md", *DOCS]
    if INTEGRATION_PAGES not in path.parents
    for index, (code, why) in enumerate(_blocks(path))
}
RUNNABLE = {name: code for name, (code, why) in BLOCKS.items() if why is None}
SERVERS = {  # what a block reads, the fixture whose server it runs on, and its marker
    "REDIS_CLUSTER_URL": ("redis_cluster", pytest.mark.redis),
    "REDIS_URL": ("redis_server", pytest.mark.redis),
    "POSTGRES_URL": ("postgres_dsn", pytest.mark.postgres),
}


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


def test_the_readme_and_the_docs_have_python_blocks() -> None:
    assert len(README_BLOCKS) >= 1
    assert len(RUNNABLE) >= 20
    assert all(_blocks(page) for page in INTEGRATION_PAGES.glob("*.md"))


def test_blocks_not_run_are_few_say_why_and_compile() -> None:
    not_run = {name: (code, why) for name, (code, why) in BLOCKS.items() if why is not None}
    assert len(not_run) <= MAX_NOT_RUN, f"make these runnable: {sorted(not_run)}"
    for name, (code, why) in not_run.items():
        assert why and why.strip(), f"{name}: say why it is not run"
        compile(code, name, "exec")


def test_docs_link_only_to_files_of_the_repository() -> None:
    for page in [ROOT / "README.md", *DOCS]:
        text = page.read_text()
        assert "DESIGN.md" not in text, f"{page.relative_to(ROOT)} cites a design file"
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", link):
                continue  # a web address
            target = (page.parent / link).resolve()
            assert target.is_relative_to(ROOT), f"{page.relative_to(ROOT)}: {link} is outside"
            assert target.exists(), f"{page.relative_to(ROOT)}: {link} does not exist"


def _servers(code: str) -> list[str]:
    return [name for name in SERVERS if re.search(rf"\b{name}\b", code)]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[SERVERS[server][1] for server in _servers(code)])
        for name, code in RUNNABLE.items()
    ],
)
def test_every_block_runs(
    name: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    block = RUNNABLE[name]
    for server in _servers(block):
        found = request.getfixturevalue(SERVERS[server][0])
        url = found if isinstance(found, str) else found.url
        if server == "REDIS_CLUSTER_URL":
            url = url.replace("redis://", "redis+cluster://", 1)
        monkeypatch.setenv(server, url)
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


def test_the_migration_page_names_the_versions_the_code_writes() -> None:
    import chatstate
    from chatstate.stores._envelope import FORMAT_VERSION
    from chatstate.stores.postgres import SCHEMA_VERSION as POSTGRES_LAYOUT
    from chatstate.stores.sqlite._schema import SCHEMA_VERSION as SQLITE_SCHEMA
    from chatstate.transfer import EXPORT_FORMAT

    page = (ROOT / "docs" / "migration.md").read_text()
    for row in (
        f"| chatstate (the package) | `{chatstate.__version__}` |",
        f"| stored entry format | `{FORMAT_VERSION}` |",
        f"| SQLite schema | `{SQLITE_SCHEMA}` |",
        f"| PostgreSQL layout | `{POSTGRES_LAYOUT}` |",
        f"| export format | `{EXPORT_FORMAT}` |",
    ):
        assert row in page, f"docs/migration.md: update the row to {row!r} (and say what changed)"
