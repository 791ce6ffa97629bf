"""Every option declared once: type, unit, default, valid range and help.

An option is a dataclass field made with :func:`option`; its metadata is an
:class:`Option`. Everything else derives from these declarations:

* the checks every front end applies (:func:`check`, called by
  ``SolverConfig.__post_init__``), with errors that name the option and the fix;
* the ``ptycho_app`` signature and docstring (:func:`signature_parameters`,
  :func:`docstring`);
* the command line flags (:func:`add_arguments`);
* the README options table (:func:`markdown_table`), kept in agreement by a test.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "Option",
    "Declared",
    "OptionError",
    "UnknownOptionError",
    "option",
    "options_of",
    "check",
    "docstring",
    "markdown_table",
    "add_arguments",
    "signature_parameters",
]


class OptionError(ValueError):
    """An option has a value of the wrong type, unit or range; the message names it and the fix."""


class UnknownOptionError(OptionError, TypeError):
    """An option name that does not exist (a TypeError, as for any unknown keyword)."""


@dataclass(frozen=True)
class Option:
    """The declaration of one option.

    Attributes
    ----------
    name
        Keyword name (``num_slices``); the CLI flag is ``--num-slices``.
    default
        Default value (``None``: decided at run time, see ``help``).
    help
        One or two sentences for docstrings, ``--help`` and the README.
    kind
        ``"float"``, ``"int"``, ``"bool"``, ``"str"``, ``"pair"`` (two
        floats), ``"device"`` or ``"dict"``.
    unit
        The unit of a bare number; strings with units ("2 nm") are converted
        with pint. ``None`` for unit-free options.
    low, high
        Valid range (inclusive unless ``open_low``/``open_high``).
    choices
        Valid values of a ``"str"`` option.
    allow_none
        Whether ``None`` is a valid value.
    cli
        Whether the command line has a flag for it.
    """

    name: str
    default: Any
    help: str
    kind: str = "float"
    unit: str | None = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] | None = None
    allow_none: bool = False
    cli: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        if self.choices:
            return " | ".join(f'"{c}"' for c in self.choices)
        if self.kind == "bool":
            return "True | False"
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.open_high else '<='} {self.high:g}")
        return ", ".join(parts)


class Declared:
    """Base of the dataclasses whose fields are options: every field is checked on construction."""

    def __post_init__(self):
        for name, opt in options_of(type(self)).items():
            setattr(self, name, check(opt, getattr(self, name)))

    @classmethod
    def options(cls) -> dict[str, Option]:
        """The declared options (name -> :class:`Option`)."""
        return options_of(cls)


def option(default, help: str, **spec) -> dataclasses.Field:
    """A dataclass field that declares an option (see :class:`Option` for ``spec``)."""
    return dataclasses.field(default=default, metadata={"option": dict(help=help, **spec)})


def options_of(cls) -> dict[str, Option]:
    """The declared options of a dataclass, in declaration order."""
    out = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out[f.name] = Option(name=f.name, default=default, **spec)
    return out


def _number(opt: Option, value, where: str) -> float:
    from ..units import to_magnitude

    if isinstance(value, bool):
        raise OptionError(f"{where}={value!r}: expected a number{_in(opt)}, got a bool.")
    if opt.unit is not None:
        try:
            return to_magnitude(value, opt.unit, where)
        except (TypeError, ValueError) as error:
            raise OptionError(str(error)) from None
    if isinstance(value, Real | np.number):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise OptionError(f"{where}={value!r}: expected a number{_in(opt)}.")


def _in(opt: Option) -> str:
    return f" in {opt.unit}" if opt.unit else ""


def _check_range(opt: Option, x: float, where: str, shown) -> None:
    ok = math.isfinite(x)
    if ok and opt.low is not None:
        ok = x > opt.low if opt.open_low else x >= opt.low
    if ok and opt.high is not None:
        ok = x < opt.high if opt.open_high else x <= opt.high
    if not ok:
        unit = f" {opt.unit}" if opt.unit else ""
        raise OptionError(
            f"{where}={shown!r} is out of range: it must be {opt.range_text()}{unit} "
            f"(default {opt.default!r}). {opt.help}"
        )


def check(opt: Option, value, where: str | None = None):
    """Validate and normalise one option's value; raises :class:`OptionError`.

    Numbers may be given as strings with units where the option has a unit
    ("2 nm" for an option in Å). Integers must be whole numbers (2.0 is
    accepted, 2.5 is not).
    """
    where = where or opt.name
    if value is None:
        if opt.allow_none:
            return None
        raise OptionError(f"{where} must be given (default {opt.default!r}). {opt.help}")
    if opt.kind == "float":
        x = _number(opt, value, where)
        _check_range(opt, x, where, value)
        return x
    if opt.kind == "int":
        if isinstance(value, bool) or not isinstance(value, Integral | Real | np.number | str):
            raise OptionError(f"{where}={value!r}: expected a whole number.")
        try:
            x = float(value)
        except ValueError:
            raise OptionError(f"{where}={value!r}: expected a whole number.") from None
        if not math.isfinite(x) or x != int(x):
            raise OptionError(f"{where}={value!r}: expected a whole number, not a fraction.")
        _check_range(opt, x, where, value)
        return int(x)
    if opt.kind == "bool":
        if isinstance(value, bool | np.bool_):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise OptionError(f"{where}={value!r}: expected True or False.")
    if opt.kind == "str":
        text = str(value).strip().lower()
        if opt.choices and text not in opt.choices:
            raise OptionError(f"{where}={value!r}: expected one of {', '.join(map(repr, opt.choices))}.")
        return text
    if opt.kind == "pair":
        if isinstance(value, str):
            value = [v for v in value.replace(";", ",").split(",") if v.strip()]
        if np.ndim(value) == 0 and not isinstance(value, list | tuple):
            raise OptionError(
                f"{where}={value!r}: expected a pair (x, y){_in(opt)}, e.g. (3, -1) or ('3 mrad', '-1 mrad')."
            )
        items = list(value) if not isinstance(value, np.ndarray) else value.ravel().tolist()
        if len(items) != 2:
            raise OptionError(
                f"{where}={value!r}: expected a pair of two values (x, y){_in(opt)}, e.g. (3, -1)."
            )
        pair = tuple(_number(opt, v, f"{where}[{i}]") for i, v in enumerate(items))
        for i, x in enumerate(pair):
            _check_range(opt, x, f"{where}[{i}]", items[i])
        return pair
    if opt.kind == "device":
        return check_device(value, where)
    if opt.kind == "mask":
        data = getattr(value, "data", value)  # a HyperSpy signal or an array
        mask = np.asarray(data)
        if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
            raise OptionError(
                f"{where}: expected a square (N, N) boolean array (True = bad pixel), got {mask.shape}."
            )
        if mask.dtype != bool:
            if not np.isin(mask, (0, 1)).all():
                raise OptionError(
                    f"{where}: expected booleans (True = bad pixel), got values other than 0 and 1."
                )
            mask = mask.astype(bool)
        return mask
    if opt.kind == "dict":
        if not isinstance(value, dict):
            raise OptionError(f"{where}={value!r}: expected a dict.")
        return dict(value)
    raise AssertionError(f"unknown option kind {opt.kind!r}")


def check_device(value, where: str = "device") -> str:
    """A torch device name that exists on this machine ("gpu" means "cuda")."""
    import torch

    name = str(value).strip().lower()
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise OptionError(
            f"{where}={value!r} is not a torch device; use 'cpu', 'cuda', 'cuda:1' or 'gpu'."
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(
                f"{where}={value!r}: torch finds no CUDA GPU (torch {torch.__version__}, CPU build or no "
                "driver). Install a CUDA build of torch (README, 'Running on a GPU') or use device='cpu'."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise OptionError(
                f"{where}={value!r}: there are only {torch.cuda.device_count()} CUDA device(s) here."
            )
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise OptionError(f"{where}={value!r}: the Apple GPU backend is not available; use 'cpu'.")
    elif device.type != "cpu":
        raise OptionError(f"{where}={value!r}: use 'cpu', 'cuda', 'cuda:N' or 'gpu'.")
    return name


# -- what derives from the declarations ---------------------------------------------------


def _default_text(opt: Option) -> str:
    if opt.default is None:
        return "None"
    if isinstance(opt.default, tuple):
        return ", ".join(f"{v:g}" for v in opt.default)
    if isinstance(opt.default, float):
        return f"{opt.default:g}"
    return str(opt.default)


def docstring(options: dict[str, Option], indent: str = "        ") -> str:
    """numpydoc ``Parameters`` entries for the options."""
    import textwrap

    lines = []
    for opt in options.values():
        unit = f", {opt.unit}" if opt.unit else ""
        lines.append(f"{indent}{opt.name}")
        body = f"{opt.help} Default {_default_text(opt)}{unit}."
        rng = opt.range_text()
        if rng:
            body += f" Valid: {rng}."
        lines.extend(
            textwrap.wrap(body, 100, initial_indent=indent + "    ", subsequent_indent=indent + "    ")
        )
    return "\n".join(lines)


def markdown_table(options: dict[str, Option]) -> str:
    """The README options table."""
    rows = ["| option | CLI flag | default | unit | valid | meaning |", "|---|---|---|---|---|---|"]
    for opt in options.values():
        flag = f"`{opt.flag}`" if opt.cli else "—"
        rows.append(
            f"| `{opt.name}` | {flag} | {_default_text(opt)} | {opt.unit or ''} | "
            f"{opt.range_text().replace('|', 'or')} | {opt.help} |"
        )
    return "\n".join(rows)


def add_arguments(group, options: dict[str, Option]) -> None:
    """Add a ``--flag`` per option to an argparse group, each value checked as it is parsed."""
    import argparse

    def parser_for(opt: Option):
        def parse(text: str):
            try:
                return check(opt, text, where=opt.flag)
            except OptionError as error:
                raise argparse.ArgumentTypeError(str(error)) from None

        parse.__name__ = opt.name
        return parse

    for opt in options.values():
        if not opt.cli:
            continue
        unit = f" {opt.unit}" if opt.unit and opt.default is not None else ""
        text = f"{opt.help} [{_default_text(opt)}{unit}]".replace("%", "%%")
        if opt.kind == "bool":
            group.add_argument(
                opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        elif opt.choices:
            group.add_argument(opt.flag, dest=opt.name, choices=opt.choices, default=None, help=text)
        else:
            metavar = {"pair": "X,Y", "int": "N", "device": "DEVICE"}.get(opt.kind, "X")
            group.add_argument(
                opt.flag, dest=opt.name, metavar=metavar, type=parser_for(opt), default=None, help=text
            )


def signature_parameters(options: dict[str, Option]) -> list[inspect.Parameter]:
    """Keyword-only parameters (default ``None`` = the option's default) for a generated signature."""
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None) for name in options]
