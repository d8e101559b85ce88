"""How ``metallmix <verb> --help`` names values: flags plain, choices as choices, arguments named.

typer 0.29 (pinned in pyproject.toml) writes a type after every parameter in its rich help:
``--json <bool>``, ``--kb <path>``, ``--compute <cpu|gpu|auto>``, and puts a required argument
in braces on the usage line (``metallmix recommend [OPTIONS] {path}``). A flag takes no value,
so a type after it reads as if it wanted one, and braces are not the usage convention users
know from click, argparse or man pages. typer offers no setting for this and builds its
parameters itself (there is no ``cls=`` for an option), so :class:`TidyHelpGroup`, the root
group's class, re-labels every parameter of the command tree once before parsing:

- a flag shows no value (``--json``; a pair declared as ``--pretrained/--scratch`` shows both);
- a choice shows its values in brackets (``--compute [cpu|gpu|auto]``);
- any other option shows its type in capitals (``--kb PATH``, ``--seed INTEGER``), a range
  keeping typer's ``[x>=1]`` note;
- an argument shows its name in capitals (``PATH``; ``[PATH]`` when optional, ``PATH...``
  when it takes several).

Only the help changes: the parameters parse exactly as before (``tests/test_cli_help.py``).
"""

from __future__ import annotations

from typing import Any, get_args

from typer.core import TyperArgument, TyperGroup, TyperOption

_TYPE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "bool": "BOOLEAN"}


class _TidyOption(TyperOption):
    """A typer option whose help shows no value for a flag and brackets for a choice."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag or self.count:
            return None
        desc = self.type_descriptor
        if desc.is_choice:
            label = self.display_type(ctx).strip("<>")
            shown = f"[{label}]"
        elif desc.is_path:
            shown = "PATH"
        else:
            annotation = desc.annotation
            if desc.is_list:  # a repeatable option: name the type of one value
                (annotation,) = get_args(annotation)
            bare = self._bare_type(annotation)
            shown = "PATH" if bare in ("Path", "PosixPath") else _TYPE_NAMES.get(bare, bare.upper())
        return shown + ("..." if self.nargs != 1 else "")


class _TidyArgument(TyperArgument):
    """A typer argument named in capitals, without braces on the usage line."""

    @property
    def display_name_raw(self) -> str:
        if self.metavar is not None:
            return self.metavar
        return (self.name or "").upper()

    def display_type_rich(self, ctx: Any) -> str | None:
        desc = self.type_descriptor
        if desc.is_choice:
            return "[" + self.display_type(ctx).strip("<>") + "]"
        return None  # the name column already says what it is

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")


def tidy_help(command: Any) -> None:
    """Re-label the parameters of ``command`` and of every sub-command, recursively."""
    from typer._click.core import Context

    params = list(getattr(command, "params", []))
    help_option = command.get_help_option(Context(command))
    if help_option is not None:
        params.append(help_option)
    for param in params:
        if type(param) is TyperOption:
            param.__class__ = _TidyOption
        elif type(param) is TyperArgument:
            param.__class__ = _TidyArgument
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)


class TidyHelpGroup(TyperGroup):
    """The root group: tidies the whole command tree's help before the first parse."""

    _tidied = False

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not self._tidied:
            tidy_help(self)
            self._tidied = True
        return super().main(*args, **kwargs)
