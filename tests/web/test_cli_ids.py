"""Row ids on the command line: a number too large for a 32-bit primary key is a usage
error naming the argument (exit 2), before any database is touched; every id argument of
the CLI uses the same bounded type."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from web.cli import main
from web.cli_common import ROW_ID


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def id_params() -> list[tuple[tuple[str, ...], click.Parameter]]:
    return [
        (path, param)
        for path, command in commands(main)
        for param in command.params
        if param.name is not None and param.name.endswith("_id") and param.type is not click.STRING
    ]


def test_every_id_argument_is_bounded() -> None:
    found = id_params()
    assert len(found) >= 15  # CA, key record, escrow, recovery request, policy rule and assignment ids
    for path, param in found:
        assert param.type is ROW_ID, (" ".join(path), param.name, param.type)


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "show", "99999999999999999999"],
        ["kmc", "recovery", "approve", "2147483648"],
        ["policy", "unrule", "2147483648"],
        ["revoke", "0a", "--ca", "2147483648"],
    ],
)
def test_a_too_large_id_is_a_usage_error(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, args, env={"GOVPKI_HOME": str(tmp_path)})
    assert result.exit_code == 2, result.output
    assert "is not in the range 1<=x<=2147483647" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
