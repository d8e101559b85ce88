"""Option groups: a dataclass's fields become a command's Typer options, the command gets one
value.

Commands that train share whole groups of options (the backend and its resources, the KB
to append to), and a command with twenty options was a function with twenty parameters.
:func:`options_from` lets a command declare one parameter typed with a frozen dataclass
whose fields are ``Annotated[type, typer.Option(...)]`` (Typer's recommended form): Typer
reads a command's parameters with :func:`inspect.signature`, which honours
``__signature__``, so the decorator puts the fields there, in the parameter's place (the
``--help`` order is the signature's), and calls the command with the dataclass built from
them. Users see the same options with the same help; the code sees one value.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

Command = Callable[..., Any]


def options_from(name: str, group: type[Any]) -> Callable[[Command], Command]:
    """Expand the command's parameter ``name`` into the fields of the dataclass ``group``.

    Each field needs a default (an optional option) or none (a required one), and its
    annotation carries the ``typer.Option``. Decorators stack: each expands one parameter.
    """
    if not dataclasses.is_dataclass(group):
        raise TypeError(f"{group!r} is not a dataclass")
    hints = typing.get_type_hints(group, include_extras=True)
    fields = [f for f in dataclasses.fields(group) if f.init]
    expanded = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
            annotation=hints[f.name],
        )
        for f in fields
    ]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        if name not in signature.parameters:
            raise TypeError(f"{command.__name__} has no parameter {name!r} to expand")
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.name == name:
                params.extend(expanded)
            else:  # keyword-only: Typer calls by name, and defaults may then come in any order
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in fields}
            return command(**kwargs, **{name: group(**values)})

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate


__all__ = ["options_from"]
