"""Flags and help generated from the config dataclasses: `add_arguments`/`from_arguments` (the finetunes'
`--field-name` options) and `--help` that lists every setting: each dataclass field with its type, default and one-line description.

The descriptions are the comments written beside the fields in the dataclasses' own source (config.py,
finetune/*.py), read with `tokenize`, so the help text cannot drift from the code that defines it.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import tokenize
import typing


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """{field name: its trailing comment} for a dataclass and its bases (the subclass's comment wins)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        names = {f.name for f in dataclasses.fields(klass)}
        last = None
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
                last = (tok.string, tok.start[0])
            elif tok.type == tokenize.COMMENT and last and tok.start[0] == last[1]:
                out[last[0]] = tok.string.lstrip("# ").strip()
    return out


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of every field, nested dataclasses flattened as `prefix.field`."""
    hints, comments, rows = typing.get_type_hints(cls), field_comments(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "")
        rows.append((prefix + f.name, _type_name(tp), repr(default), comments.get(f.name, "")))
    return rows


def table(rows: list[tuple[str, str, str, str]], flag=lambda name: f"--{name}=") -> str:
    """The rows as aligned text lines for argparse's epilog."""
    width = max(len(flag(r[0]) + r[1]) for r in rows) + 2
    lines = []
    for name, tp, default, text in rows:
        head = f"  {flag(name)}{tp}".ljust(width + 2)
        lines.append(f"{head} {text}{' ' if text else ''}(default {default})")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "", only=None, defaults=None,
                  help_text: dict | None = None) -> None:
    """One `--field-name` option per dataclass field, typed from its annotation, defaulting to None; nested
    dataclasses (mesh, dist) become `--mesh.fsdp` and so on, except a section the class lists in its
    `flat_sections` (a finetune's `train`), whose listed fields are flags without a prefix (`--batch-size`).
    `only`: the fields to take; `defaults`: an instance whose values the help shows; `help_text`: help that
    replaces a field's own comment."""
    hints, comments, flat = typing.get_type_hints(cls), field_comments(cls), getattr(cls, "flat_sections", {})
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if f.name in flat:
                add_arguments(parser, tp, prefix, only=flat[f.name], defaults=getattr(cls(), f.name),
                              help_text=getattr(cls, "flag_help", {}))
            else:
                add_arguments(parser, tp, f"{prefix}{f.name}.")
            continue
        flag = "--" + prefix + (f.name.replace("_", "-") if not prefix else f.name)
        dest = (prefix + f.name).replace(".", "__")
        default = getattr(defaults, f.name) if defaults is not None else (
            f.default if f.default is not dataclasses.MISSING else None)
        text = (help_text or {}).get(f.name, comments.get(f.name, "")).replace("%", "%%")
        if tp is bool:
            parser.add_argument(flag, dest=dest, default=None, action=argparse.BooleanOptionalAction,
                                help=f"{text} (default {'yes' if default else 'no'})")
        else:
            parser.add_argument(flag, dest=dest, type=tp, default=None, metavar=tp.__name__.upper(),
                                help=f"{text} (default {default!r})")


def from_arguments(cls: type, args, prefix: str = ""):
    """The dataclass with every option the user gave, the rest its defaults (`add_arguments`' flags)."""
    hints, given, flat = typing.get_type_hints(cls), {}, getattr(cls, "flat_sections", {})
    for f in dataclasses.fields(cls):
        if f.name in flat:
            named = {k: getattr(args, prefix + k) for k in flat[f.name] if getattr(args, prefix + k, None) is not None}
            given[f.name] = dataclasses.replace(getattr(cls(), f.name), **named)
        elif dataclasses.is_dataclass(hints[f.name]):
            given[f.name] = from_arguments(hints[f.name], args, f"{prefix}{f.name}__")
        elif getattr(args, prefix + f.name, None) is not None:
            given[f.name] = getattr(args, prefix + f.name)
    return cls(**given)
