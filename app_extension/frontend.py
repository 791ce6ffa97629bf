"""What every front end does with the options a user gives, in one place.

The HyperSpy signal (and through it the CLI) and the py4DSTEM class all call
:func:`resolve_options`: it checks each option against its one declaration
(:mod:`app_extension.solver.options`), merges the options with those of a run
being resumed, and refuses options that would change the physics of a resumed
run without being applied.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .solver.config import CalibrationOptions, ExperimentOptions, SolverConfig
from .solver.options import OptionError, UnknownOptionError, check, docstring, signature_parameters

if TYPE_CHECKING:
    from .solver.state import ReconstructionState

__all__ = [
    "ResolvedOptions",
    "resolve_options",
    "ALL_OPTIONS",
    "START_ONLY",
    "options_signature",
    "options_doc",
]

#: Every option of a reconstruction (solver options, probe and scan options, data preparation).
ALL_OPTIONS = {**SolverConfig.options(), **ExperimentOptions.options(), **CalibrationOptions.options()}

#: Options that set the start of a run: a resumed run keeps its own and refuses others.
START_ONLY = ("num_slices", "slice_thickness", "tilt", "probe_modes", "padded_size", "tilt_map")


@dataclass
class ResolvedOptions:
    """The checked options of a call."""

    config: SolverConfig
    experiment: ExperimentOptions
    state: ReconstructionState | None
    base_geometry: dict
    calibration: CalibrationOptions


def _same(a, b) -> bool:
    try:
        return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-9, atol=1e-9))
    except (TypeError, ValueError):
        return a == b


def resolve_options(given: Mapping, resume=None, caller: str = "ptycho_app") -> ResolvedOptions:
    """Check the user's options and merge them with a resumed run's.

    Parameters
    ----------
    given
        Option name -> value (``None`` = not given). Unknown names raise.
    resume
        What to continue from (see :func:`app_extension.results.load_resume`),
        or ``None``.
    caller
        Named in error messages.

    Raises
    ------
    OptionError
        An unknown option, a value of the wrong type, unit or range, or an
        option that cannot apply to a resumed run.
    """
    from .results import load_resume

    unknown = sorted(set(given) - set(ALL_OPTIONS))
    if unknown:
        raise UnknownOptionError(
            f"{caller} got unknown option(s) {unknown}; the options are {sorted(ALL_OPTIONS)}."
        )
    given = {k: v for k, v in given.items() if v is not None}
    checked = {name: check(ALL_OPTIONS[name], value) for name, value in given.items()}
    state, base_config, base_geometry = (None, None, None) if resume is None else load_resume(resume)
    base_geometry = dict(base_geometry or {})
    if state is not None:
        _refuse_start_options(checked, state, base_config, base_geometry, caller)
        checked["num_slices"] = state.num_slices
    solver = {k: v for k, v in checked.items() if k in SolverConfig.options()}
    experiment = {k: v for k, v in checked.items() if k in ExperimentOptions.options()}
    calibration = {k: v for k, v in checked.items() if k in CalibrationOptions.options()}
    if state is not None:  # the resumed run's data preparation, unless given now
        previous = base_geometry.get("calibration_options") or {}
        for k, v in previous.items():
            if k in CalibrationOptions.options() and k != "detector_mask":
                calibration.setdefault(k, None if isinstance(v, str) and v == "none" else v)
    config = (base_config or SolverConfig()).replace(**solver)
    if state is not None:
        experiment.setdefault("defocus", base_geometry.get("defocus"))
        experiment.setdefault("aberrations", base_geometry.get("aberrations"))
    return ResolvedOptions(
        config, ExperimentOptions(**experiment), state, base_geometry, CalibrationOptions(**calibration)
    )


def _refuse_start_options(checked: dict, state, base_config, base_geometry: dict, caller: str) -> None:
    current = {
        "num_slices": state.num_slices,
        "probe_modes": int(state.probe.shape[0]),
        "tilt_map": state.tilt.shape[0] > 1,
    }
    if base_config is not None:
        current.update(
            slice_thickness=base_config.slice_thickness,
            tilt=base_config.tilt,
            padded_size=base_config.padded_size,
        )
    for name in START_ONLY:
        if name in checked and name in current and not _same(checked[name], current[name]):
            raise OptionError(
                f"{name}={checked[name]!r} sets the start of a new run, but the run being resumed has "
                f"{name}={current[name]!r} (it continues from its learned state). Leave {name} out when "
                "resuming, or start a new run without resume."
            )
    for name, key in (("defocus", "defocus"), ("aberrations", "aberrations")):
        if name in checked and key in base_geometry and not _same_dict(checked[name], base_geometry[key]):
            raise OptionError(
                f"{name}={checked[name]!r} would change the probe of the run being resumed "
                f"({name}={base_geometry[key]!r}); the probe is learned, so a new value would not be applied. "
                f"Leave {name} out when resuming, or start a new run."
            )
    if "scan_rotation" in checked and "scan_positions" in base_geometry:
        from .signals.calibration import raster_rotation

        previous = raster_rotation(np.asarray(base_geometry["scan_positions"]))
        if not _same(checked["scan_rotation"], previous):
            raise OptionError(
                f"scan_rotation={checked['scan_rotation']!r} differs from the run being resumed "
                f"({previous:.4g} deg); its scan positions are kept. Leave scan_rotation out when resuming, "
                "or start a new run."
            )


def _same_dict(a, b) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        from .units import to_magnitude

        keys = set(a) | set(b)
        try:
            return all(
                _same(to_magnitude(a.get(k, 0.0), "Å", k), to_magnitude(b.get(k, 0.0), "Å", k)) for k in keys
            )
        except (TypeError, ValueError):
            return False
    return _same(a, b)


def calibration_record(calibration: CalibrationOptions) -> dict:
    """The data-preparation options as plain values (the detector mask left out), to store with a run."""
    return {
        name: getattr(calibration, name) for name in CalibrationOptions.options() if name != "detector_mask"
    }


def options_signature(first: list[inspect.Parameter]) -> inspect.Signature:
    """A signature with ``first`` and then every option as a keyword (default None)."""
    params = [p for p in first if p.kind != inspect.Parameter.VAR_KEYWORD]
    return inspect.Signature(params + signature_parameters(ALL_OPTIONS))


def options_doc(indent: str = "        ") -> str:
    """numpydoc entries for every option (for the front ends' docstrings)."""
    return docstring(ALL_OPTIONS, indent)


def options_markdown() -> str:
    """The README options table (regenerate with ``python -m app_extension.frontend``)."""
    from .solver.options import markdown_table

    return markdown_table(ALL_OPTIONS)


def update_readme(path) -> None:
    """Replace the options table between the README's markers with the generated one."""
    from pathlib import Path

    text = Path(path).read_text(encoding="utf-8")
    head, rest = text.split(_TABLE_START, 1)
    _, tail = rest.split(_TABLE_END, 1)
    Path(path).write_text(f"{head}{_TABLE_START}{options_markdown()}{_TABLE_END}{tail}", encoding="utf-8")


_TABLE_START = "<!-- options-table:start -->\n"
_TABLE_END = "\n<!-- options-table:end -->"

if __name__ == "__main__":  # pragma: no cover
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        update_readme(sys.argv[2])
    else:
        print(options_markdown())
