"""The ``msgtrace`` and ``trace-msg`` commands: a thin click layer over the library.

Subcommands live beside the code they drive and are imported lazily, so
``trace-msg`` does not pay for the collector's or the demo's imports.
"""
from __future__ import annotations

import importlib
from typing import Any

import click

from tracer.cli.util import err

#: subcommand -> "module:attribute" (imported on first use)
LAZY_COMMANDS: dict[str, str] = {
    "trace-msg": "tracer.cli.tracemsg:trace_msg",
    "reconcile": "tracer.cli.reconcile:reconcile",
    "incident": "tracer.cli.incident:incident",
    "collect": "collectors.cli:collect",
    "ship": "tracer.cli.ship:ship",
    "audit-health": "tracer.cli.audit:audit_health_cmd",
    "demo": "tracer.demo:demo",
    "db": "tracer.cli.db:db",
    "retention": "tracer.cli.retention:retention",
    "replay": "tracer.cli.replay:replay",
    "import": "tracer.cli.importer:import_group",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n in LAZY_COMMANDS if self._load(n) is not None)
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._load(name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(name)
        if not target:
            return None
        mod, attr = target.split(":")
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name == mod:  # that part of msgtrace is not built yet
                return None
            raise
        return getattr(module, attr, None)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="msgtrace")
def main() -> None:
    """msgtrace: find out, per message, where the message queue lost it."""


def trace_msg_main(argv: Any = None) -> Any:
    """Entry point of the ``trace-msg`` console script."""
    cmd = LazyGroup._load("trace-msg")
    if cmd is None:
        err.print("trace-msg is not available in this build")
        raise SystemExit(2)
    return cmd.main(args=argv, prog_name="trace-msg")
