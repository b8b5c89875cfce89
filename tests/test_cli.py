"""The `chatstate` command line: its help, its commands, how it fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import chatstate
from chatstate.cli import COMMANDS, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # as if argparse did not wrap lines
    for command in COMMANDS:
        assert f"{command.name} {command.help}" in printed


def test_bench_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    printed = capsys.readouterr().out
    for option in (
        "--redis URL",
        "--redis-server",
        "--sessions",
        "--turns",
        "--history",
        "--message-bytes",
        "--repeats",
        "--quick",
        "--json PATH",
        "--plot PATH",
        "--max-connections",
        "--no-progress",
    ):
        assert option in printed


def test_bench_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    assert "\n  chatstate bench --quick" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"chatstate {chatstate.__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [([], "the following arguments are required: COMMAND"), (["nope"], "invalid choice: 'nope'")],
)
def test_no_or_an_unknown_command_exits_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_commands_have_unique_names() -> None:
    names = [command.name for command in COMMANDS]
    assert len(names) == len(set(names)) and "bench" in names


@pytest.mark.parametrize(
    "program",
    [[sys.executable, "-m", "chatstate"], [str(Path(sys.executable).parent / "chatstate")]],
    ids=["python -m chatstate", "console script"],
)
def test_the_installed_entry_points_run(program: list[str]) -> None:
    # One process each (0.2 s): the usage shows that main() ran, and its exit status comes back.
    bad = subprocess.run(
        [*program, "bench", "--turns", "0"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2, bad.stderr
    assert "usage: chatstate bench" in bad.stderr
    assert "expected a positive integer" in bad.stderr
