"""Shared pieces of the click CLI: options, error handling, consoles.

Library errors become one clean line on stderr and exit code 2; results go to
stdout (rich for people, JSON for machines).
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

from tracer.errors import MsgtraceError, describe

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes shared by every command.
EXIT_OK, EXIT_LOST, EXIT_ERROR, EXIT_UNKNOWN = 0, 1, 2, 3

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """Print one line to stderr and exit."""
    from rich.markup import escape

    line = " ".join(str(message).split())  # one line, whatever the library said
    err.print(f"[bold red]error:[/] {escape(line)}", markup=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn msgtrace errors (and a few client ones) into one line + exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MsgtraceError as e:
            fail(str(e))
        except TimeoutError as e:
            fail(f"timed out: {e}")
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)
        except (SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as e:  # never exit 1 ("lost") because msgtrace itself broke
            fail(f"unexpected error: {describe(e)}")

    return wrapper  # type: ignore[return-value]


def store_option(fn: F) -> F:
    return click.option("--store", "store_url", envvar="MSGTRACE_STORE", metavar="URL",
                        help="Store URL: chdb:///dir (default: embedded dir under the user's data dir) "
                             "or clickhouse://user:pass@host:9000/db. Env: MSGTRACE_STORE.")(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON to stdout.")(fn)


def bootstrap_option(fn: F) -> F:
    return click.option("--bootstrap", envvar="MSGTRACE_KAFKA_BOOTSTRAP", metavar="HOST:PORT",
                        help="Audit Kafka bootstrap servers. Env: MSGTRACE_KAFKA_BOOTSTRAP.")(fn)


def audit_topic_option(fn: F) -> F:
    return click.option("--audit-topic", envvar="MSGTRACE_AUDIT_TOPIC", default="msgtrace.audit",
                        show_default=True, help="Audit topic. Env: MSGTRACE_AUDIT_TOPIC.")(fn)


# --- progress ----------------------------------------------------------------------------

class _Progress:
    """What :func:`progress_display` yields: call it with the phase now running (the analysis'
    ``progress(text)`` callback); ``done()`` ends the display early. Quiet: every call is a no-op."""

    __slots__ = ("_live", "_task")

    def __init__(self, live: Any = None) -> None:
        self._live = live
        self._task: Any = None

    def __call__(self, text: str) -> None:
        if self._live is None:
            return
        if self._task is None:
            self._task = self._live.add_task(text, total=None)
        else:
            self._live.update(self._task, description=text)

    @property
    def enabled(self) -> bool:
        return self._live is not None


def progress_display(enabled: bool = True, *, console: Console | None = None) -> Any:
    """A rich progress line on stderr (spinner, phase, elapsed time) for commands that can take more
    than a couple of seconds (reconcile, incident, replay, collect --until-idle).

    Shown only when ``enabled`` (pass ``not as_json``) and stderr is a terminal: a cron job, a pipe
    or ``--json`` gets nothing, so machine output stays clean. Use as::

        with progress_display(not as_json) as progress:
            run(..., progress=progress)       # progress("pass 1") updates the line
    """
    import contextlib

    con = console or err

    @contextlib.contextmanager
    def ctx() -> Any:
        if not enabled or not con.is_terminal:
            yield _Progress()
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=con, transient=True) as live:
            yield _Progress(live)

    return ctx()
