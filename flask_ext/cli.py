"""``flask dcm COMMAND``: the admin commands of `dcm_sync.cli` on the app's ``DCM_*`` settings.

The extension adds the group in ``init_app``; the commands read the app's configuration (as
the servers do, environment included) and open an Emitter only when one runs. Exit codes are
those of ``python -m dcm_sync``: 1 when Redis failed, 2 for bad arguments or settings.
"""

from __future__ import annotations

from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup, with_appcontext

from dcm_sync import DCMError
from dcm_sync.cli import COMMANDS, Command, execute

from .state import build_config

__all__ = ["make_cli_group"]

_HINT = "set DCM_REDIS_URL in the app's configuration"


def make_cli_group() -> AppGroup:
    """The ``dcm`` command group: one command per entry of `dcm_sync.cli.COMMANDS`."""
    group = AppGroup("dcm", help="Look at and act on the connections, rooms and servers that "
                                 "share the app's Redis (DCM_REDIS_URL, DCM_KEY_PREFIX).")
    for command in COMMANDS:
        group.add_command(_click_command(command))
    return group


def _click_command(command: Command) -> click.Command:
    params: list[click.Parameter] = []
    for p in command.params:
        kind: Any = p.kind if p.minimum is None else click.IntRange(min=p.minimum)
        if p.flag is None:
            params.append(click.Argument([p.name], metavar=p.metavar))
        else:
            params.append(click.Option([p.flag, p.name], type=kind, default=p.default,
                                       metavar=p.metavar, help=p.help))
    params.append(click.Option(["--json", "as_json"], is_flag=True,
                               help="Print JSON instead of a table."))

    def run(as_json: bool, **values: Any) -> None:
        try:
            text = execute(build_config(current_app), command, values, as_json, _HINT)
        except ValueError as exc:  # ConfigError too
            raise click.UsageError(str(exc)) from exc
        except DCMError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(text)

    return click.Command(command.name, callback=with_appcontext(run), params=params,
                         help=command.help)
