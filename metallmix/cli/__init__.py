"""The ``metallmix`` command line.

Each verb group lives in its own module and registers itself on :data:`app`. ``main``
turns user errors (:class:`~metallmix.errors.MetaLLMiXError`) into a one-line reason and
a non-zero exit instead of a traceback.
"""

from __future__ import annotations

import sys

import typer

from metallmix.errors import MetaLLMiXError

app = typer.Typer(
    name="metallmix",
    help="Zero-shot model and hyperparameter recommender for image classification.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
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


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        app(args=argv, standalone_mode=False)
    except MetaLLMiXError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (typer.Exit, SystemExit) as exc:  # pragma: no cover - click internals
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        return int(code or 0)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
