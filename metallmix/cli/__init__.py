"""The ``metallmix`` command line.

Each verb group lives in its own module and registers itself on :data:`app`. ``main``
turns user errors (:class:`~metallmix.errors.MetaLLMiXError`) into a one-line reason and
a non-zero exit instead of a traceback, and usage errors (unknown option or command,
missing argument, a value of the wrong type) into click's usage message and exit 2.
Ctrl-C ends every verb with one line and exit 130; SIGTERM is turned into the same
interrupt (so open MLflow runs are closed as KILLED) and exits 143.
typer >= 0.29 bundles its own copy of click (``typer._click``) whose exceptions are not
``click.ClickException``, so both families are caught (typer is pinned in pyproject.toml).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from metallmix.cli.help_format import TidyHelpGroup
from metallmix.errors import (
    EXIT_INTERRUPTED,
    EXIT_NOT_RECORDED,
    EXIT_TERMINATED,
    MetaLLMiXError,
    Terminated,
)

EXIT_CODES_HELP = (
    f"Exit codes: 0 success; 1 failure (no answer); 2 usage or input error; "
    f"{EXIT_NOT_RECORDED} answer given but not recorded in MLflow (the reason is the last "
    f"line on stderr); {EXIT_INTERRUPTED} Ctrl-C; {EXIT_TERMINATED} SIGTERM."
)

app = typer.Typer(
    name="metallmix",
    help="Zero-shot model and hyperparameter recommender for image classification.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=TidyHelpGroup,  # help shows --flag, --compute [cpu|gpu|auto], PATH: see help_format
)


# Verb groups, each a module of this package exposing ``register(app)``.
VERB_MODULES = ("features", "kb", "meta", "train", "recommend", "bench", "compare", "llm")


def _register() -> None:
    import importlib

    for name in VERB_MODULES:
        qualified = f"metallmix.cli.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name == qualified:  # verb group not part of this build
                continue
            raise
        module.register(app)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("metallmix")
        except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
            found = "unknown (not installed)"
        typer.echo(f"metallmix {found}")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False,
        "--version",
        callback=_version,
        is_eager=True,
        help="Print the MetaLLMiX version and exit.",
    ),
) -> None:
    """Zero-shot model and hyperparameter recommender for image classification."""


_register()


def _click_exceptions() -> tuple[type[Exception], ...]:
    """ClickException of the standalone click and of typer's bundled copy, if present."""
    found: list[type[Exception]] = []
    try:
        import click

        found.append(click.ClickException)
    except ImportError:  # pragma: no cover - typer without click installed
        pass
    try:
        from typer._click.exceptions import ClickException as BundledClickException

        found.append(BundledClickException)
    except ImportError:  # pragma: no cover - older typer that uses click itself
        pass
    return tuple(found)


# A CLI process exits right after its answer, so MLflow's asynchronous trace export buys
# nothing: its worker thread competes with llama.cpp for the two cores while the judge runs,
# and its exit handler waits on a 1 s queue poll. Measured on the bundled card with ``fast``
# on an idle 2-core box: 15.8 s end to end asynchronous, 11.6 s synchronous. The user's own
# setting wins; the Python API (a long-lived process) keeps MLflow's default.
SYNC_TRACE_EXPORT = ("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")


_SIGNAL: list[int] = []  # the signal that interrupted this run, when one did


def _on_sigterm(signum: int, frame: object) -> None:
    _SIGNAL.append(signum)
    raise Terminated(signum)


def _interrupted() -> int:
    """One line for an interrupt, and its exit code (130 Ctrl-C, 143 SIGTERM)."""
    if _SIGNAL:
        print(
            f"error: terminated (signal {_SIGNAL[-1]}); finished work is kept, re-run the "
            "same command to continue",
            file=sys.stderr,
        )
        return EXIT_TERMINATED
    print(
        "error: interrupted (Ctrl-C); finished work is kept, re-run the same command to continue",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED


def _install_sigterm() -> Any:
    """SIGTERM raises :class:`Terminated` in the main thread (returns the old handler)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    import signal

    os.environ.setdefault(*SYNC_TRACE_EXPORT)
    _SIGNAL.clear()
    previous = _install_sigterm()
    try:
        code = app(args=argv, prog_name="metallmix", standalone_mode=False)
    except MetaLLMiXError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # raised outside click's own handler
        return _interrupted()
    except (typer.Exit, SystemExit) as exc:  # pragma: no cover - click internals
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
    except typer.Abort as exc:
        if isinstance(exc.__cause__, EOFError):  # click turns EOFError into Abort, not Ctrl-C
            print(f"error: unexpected end of file ({exc.__cause__})", file=sys.stderr)
            return 1
        return _interrupted()
    except Exception as exc:  # click usage errors: usage line, hint, "Error: ..."; exit 2
        if isinstance(exc, _click_exceptions()):
            exc.show()  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", 1))
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    # typer's click turns KeyboardInterrupt into Exit(130) and, outside standalone mode,
    # returns the code instead of raising it
    code = int(code) if isinstance(code, int) and not isinstance(code, bool) else 0
    if code == EXIT_INTERRUPTED:
        return _interrupted()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
