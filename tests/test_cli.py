"""The CLI contract: --help works, every listed command is real, user errors print no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from latentlens.cli import command_modules, build_parser, main


def test_help_lists_every_command_module(capsys):
    parser = build_parser()
    help_text = parser.format_help()
    for module in command_modules():
        assert module.NAME in help_text
        assert module.HELP, f"command {module.NAME} has no help text"


def test_command_help_and_description_print_percent_signs_once():
    parser = build_parser()
    listing = parser.format_help()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for module in command_modules():
        description = subparsers.choices[module.NAME].format_help()
        assert "%%" not in listing and "%%" not in description, module.NAME
    assert "95 % intervals" in " ".join(subparsers.choices["study"].format_help().split())


@pytest.mark.slow  # a fresh interpreter that imports torch (~2 s); the in-process help tests stay fast
def test_help_exits_zero():
    completed = subprocess.run(
        [sys.executable, "-m", "latentlens", "--help"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0
    assert "usage: latentlens" in completed.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: latentlens" in capsys.readouterr().out
