"""Options are declared once; the CLI, ptycho_app, the py4DSTEM class and the README agree with it."""

import inspect
import re
from pathlib import Path

import pytest

from app_extension.cli import build_parser
from app_extension.frontend import ALL_OPTIONS, options_markdown
from app_extension.signals.ptychography import AppPtychography2D
from app_extension.solver.config import SolverConfig
from app_extension.solver.options import OptionError, check

README = Path(__file__).resolve().parents[1] / "README.md"


def _cli_help() -> str:
    sub = build_parser()._subparsers._group_actions[0].choices["reconstruct"]
    return sub.format_help()


def test_every_option_has_a_declaration_with_help():
    assert set(SolverConfig.options()) == set(SolverConfig.__dataclass_fields__)
    for opt in ALL_OPTIONS.values():
        assert opt.help.strip().endswith(".") and len(opt.help) > 15, opt.name


def test_ptycho_app_signature_and_docstring_list_every_option():
    params = inspect.signature(AppPtychography2D.ptycho_app).parameters
    doc = AppPtychography2D.ptycho_app.__doc__
    for name in ALL_OPTIONS:
        assert name in params and params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert re.search(rf"^\s+{name}\n", doc, re.M), name


def test_cli_help_lists_every_option_with_its_default():
    text = " ".join(_cli_help().split()).split("reconstruction (units", 1)[1]  # past the usage line
    for opt in ALL_OPTIONS.values():
        if not opt.cli:
            continue
        assert opt.flag in text, opt.flag
        default = "None" if opt.default is None else opt.default
        if isinstance(default, tuple):
            default = ", ".join(f"{v:g}" for v in default)
        elif isinstance(default, float):
            default = f"{default:g}"
        assert f"[{default}" in text.split(opt.flag, 1)[1][:400], opt.flag


def test_readme_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- options-table:start -->\n", 1)[1].split("\n<!-- options-table:end -->", 1)[0]
    assert block == options_markdown(), (
        "README options table is stale: python -m app_extension.frontend --write README.md"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_slices", 2.5),
        ("padded_size", 65.5),
        ("slice_thickness", "-2 nm"),
        ("tilt", "3 mrad"),
        ("mode", "xyz"),
    ],
)
def test_same_checks_in_every_front_end(name, value, small_signal):
    """One bad value, the same error naming the option, from SolverConfig, ptycho_app and the CLI parser."""
    with pytest.raises(OptionError, match=name):
        check(ALL_OPTIONS[name], value)
    with pytest.raises(OptionError, match=name):
        SolverConfig(**{name: value})
    with pytest.raises(OptionError, match=name):
        small_signal.ptycho_app(**{name: value}, show_progressbar=False)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["reconstruct", "x.hspy", ALL_OPTIONS[name].flag, str(value)])
