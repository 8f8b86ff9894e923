"""Recipes: `configs/*.py` files that define a module-level `config = Config(...)`, and dotted overrides
from the command line (`--model.n_layer=2`). Every override is parsed against the field's declared type,
and a key that does not exist is an error that lists the valid ones."""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from pathlib import Path
from typing import Any

from jaxgpt.config import SECTIONS, Config, flatten
from jaxgpt.errors import UserError

DEFAULT_CONFIG = "configs/shakespeare_char.py"  # the recipe of `python train.py` without --config


def default_config_path() -> Path:
    """The default recipe: in the working folder if it has one, else beside this package (a source checkout)."""
    here = Path(DEFAULT_CONFIG)
    return here if here.is_file() else Path(__file__).resolve().parent.parent / DEFAULT_CONFIG


def load_config_file(path: str | Path) -> Config:
    """Execute a recipe file from `configs/` and return its module-level `config`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist; pass --config configs/<name>.py")
    spec = importlib.util.spec_from_file_location(f"jaxgpt_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"config file {path} has a syntax error on line {e.lineno}: {e.msg}") from None
    except Exception as e:  # a recipe is user code: report its failure in one line
        raise UserError(f"config file {path} failed to load: {type(e).__name__}: {e}") from None
    cfg = getattr(module, "config", None)
    if not isinstance(cfg, Config):
        raise UserError(f"config file {path} must define `config = Config(...)` (jaxgpt.config.Config)")
    return cfg


def _parse_value(key: str, text: str, annotation: Any) -> Any:
    """Parse a command-line string into the declared type of one field."""
    tp = typing.get_type_hints(annotation[0])[annotation[1]]
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null"):
            return None
        tp = args[0]
    try:
        if tp is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            # Allow escapes so a prompt such as "\n" can be given on the command line.
            return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except ValueError:
        raise UserError(f"{key}={text!r} is not a valid {tp.__name__}") from None
    raise AssertionError(f"unsupported field type {tp} for {key}")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `section.field=value` strings (a leading `--` is allowed) and return the new config."""
    valid = list(flatten(cfg))
    sections = {s: getattr(cfg, s) for s in SECTIONS}
    for item in overrides:
        key, sep, text = item.removeprefix("--").partition("=")
        if not sep:
            raise UserError(f"override {item!r} needs the form section.key=value, e.g. --train.max_steps=100")
        if key not in valid:
            raise UserError(f"unknown config key {key!r}; valid keys: {', '.join(valid)}")
        section, name = key.split(".", 1)
        value = _parse_value(key, text, (SECTIONS[section], name))
        sections[section] = dataclasses.replace(sections[section], **{name: value})
    return Config(**sections)
