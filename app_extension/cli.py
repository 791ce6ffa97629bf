"""Command line: ``app-ptycho reconstruct FILE`` and ``app-ptycho demo``.

``reconstruct`` reads a 4D-STEM file (anything RosettaSciIO reads), applies
calibration overrides given with units, runs APP or FPP through the HyperSpy
signal's ``ptycho_app`` method and writes the result (.hspy or .zspy) and a
PNG summary. ``demo`` simulates a small tilted SrTiO3 crystal and reconstructs
it with APP and FPP, printing the recovered tilt and thickness next to the
truth. ``python -m app_extension`` is the same program.

Under ``torchrun`` (several processes on torch.distributed, see
:mod:`app_extension.solver.distributed`) every rank runs the same command
and shares the positions; only rank 0 writes the result, the PNG summary and
prints the report.

Exit status: 0 on success, 1 on a bad input or a failed run (with a message
saying what to do), 2 on a command-line usage error, 130 when interrupted
(the partial result is still written).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .frontend import ALL_OPTIONS
from .solver.config import SolverConfig
from .solver.options import OptionError, add_arguments, check, check_device

__all__ = ["main", "build_parser", "CLIError"]

PROG = "app-ptycho"
RESULT_EXTENSIONS = (".hspy", ".zspy")


class CLIError(Exception):
    """A problem the user can fix; printed without a traceback."""


# ---------------------------------------------------------------------------
# Quantities with units


def _quantity(text: str, option: str):
    import re

    import pint

    from .units import ureg

    cleaned = re.sub(r"(?<![A-Za-z_])A(?![A-Za-z_])", "Å", str(text).strip())
    try:
        q = ureg.Quantity(cleaned)
    except (pint.errors.PintError, AttributeError, TypeError, SyntaxError, ValueError) as error:
        raise CLIError(f"{option} {text!r}: cannot read this quantity ({error}).") from error
    return q


def parse_length(text: str, option: str, unit: str = "Å") -> float:
    """A length in Å (bare numbers are taken to be Å already)."""
    q = _quantity(text, option)
    if not hasattr(q, "units") or q.unitless:
        return float(getattr(q, "magnitude", q))
    if q.dimensionality != q._REGISTRY.meter.dimensionality:
        raise CLIError(f"{option} {text!r} is not a length; give e.g. '{option} \"2 nm\"' or '\"20 Å\"'.")
    return float(q.to(unit).magnitude)


def parse_angle(text: str, option: str, unit: str = "mrad", example: str = "22 mrad") -> float:
    """An angle in ``unit`` (bare numbers are taken to be in ``unit`` already)."""
    q = _quantity(text, option)
    if not hasattr(q, "units") or str(q.units) == "dimensionless":
        return float(getattr(q, "magnitude", q))
    if not q.dimensionless:
        raise CLIError(f"{option} {text!r} is not an angle; give e.g. '{option} \"{example}\"'.")
    return float(q.to(unit).magnitude)


def parse_energy(text: str, option: str) -> float:
    """A beam energy in keV; "300 kV", "300 keV", "300000 eV" or a bare 300 (keV)."""
    q = _quantity(text, option)
    if not hasattr(q, "units") or q.unitless:
        value = float(getattr(q, "magnitude", q))
    elif q.dimensionality == q._REGISTRY.volt.dimensionality:
        value = float(q.to("kV").magnitude)
    elif q.dimensionality == q._REGISTRY.eV.dimensionality:
        value = float(q.to("keV").magnitude)
    else:
        raise CLIError(f"{option} {text!r} is not a beam energy; give e.g. '{option} \"300 kV\"'.")
    if not 1 <= value <= 3000:
        raise CLIError(f"{option} {text!r} = {value:g} keV is implausible; give e.g. '{option} \"300 kV\"'.")
    return value


def parse_detector_sampling(text: str, option: str) -> tuple[float, str]:
    """Detector pixel size: (value, "mrad") for an angle or (value, "1 / Å") for a spatial frequency."""
    q = _quantity(text, option)
    if not hasattr(q, "units") or str(q.units) == "dimensionless":
        raise CLIError(
            f"{option} {text!r} needs units: an angle per pixel ('1 mrad') or a spatial frequency ('0.05 1/Å')."
        )
    if q.dimensionless:
        return float(q.to("mrad").magnitude), "mrad"
    if q.dimensionality == (1 / q._REGISTRY.meter).dimensionality:
        return float(q.to("1/Å").magnitude), "1 / Å"
    raise CLIError(f"{option} {text!r} is neither an angle nor 1/length; give '1 mrad' or '0.05 1/Å'.")


def parse_tilt(text: str, option: str = "--tilt") -> tuple[float, float]:
    """Tilt "TX,TY" in mrad, units optional per value: "8,-3" or "8 mrad, -3 mrad"."""
    parts = [p for p in str(text).replace(";", ",").split(",")]
    if len(parts) != 2:
        raise CLIError(f"{option} {text!r}: give two values theta_x,theta_y, e.g. {option}=8,-3 (mrad).")
    return parse_angle(parts[0], option), parse_angle(parts[1], option)


# ---------------------------------------------------------------------------
# Parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``app-ptycho``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Multislice electron ptychography of tilted crystals with the adaptive propagator (APP: tilt "
            "and slice thickness learned) or the fixed propagator (FPP, with post-alignment)."
        ),
        epilog=f"Run '{PROG} demo' for a two-minute example on simulated data.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    rec = sub.add_parser(
        "reconstruct",
        help="reconstruct a 4D-STEM file",
        description="Reconstruct a 4D-STEM file and write the result (.hspy/.zspy) and a PNG summary.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument(
        "file", metavar="FILE", help="4D-STEM data: .hspy, .zspy, EMPAD .xml, .mib, .blo, .h5/.emd ..."
    )
    out = rec.add_argument_group("output")
    out.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="result file, .hspy or .zspy (default: FILE's name + _app.hspy)",
    )
    out.add_argument("--summary", metavar="PNG", help="PNG summary (default: the output path with .png)")
    out.add_argument("--no-summary", action="store_true", help="do not write the PNG summary")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    out.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print the memory preflight's estimate part by part",
    )

    cal = rec.add_argument_group("calibration (overrides the file's; units optional, defaults in brackets)")
    cal.add_argument("--beam-energy", metavar="E", help='beam energy ["300 kV"; bare numbers are keV]')
    cal.add_argument("--convergence-angle", metavar="A", help='convergence semi-angle ["22 mrad"]')
    cal.add_argument("--scan-step", metavar="L", help='scan step ["0.39 Å"; bare numbers are Å]')
    cal.add_argument(
        "--detector-sampling",
        metavar="K",
        help='detector pixel size: "1 mrad" or "0.05 1/Å" (units required)',
    )
    cal.add_argument(
        "--scan-shape", metavar=("NY", "NX"), nargs=2, type=int, help="reshape a (P, ky, kx) stack"
    )
    cal.add_argument("--signal-index", metavar="I", type=int, help="which signal of a multi-signal file")
    cal.add_argument(
        "--clip-negative",
        action="store_true",
        help="set negative counts (e.g. left by a dark-reference subtraction) to zero before reconstructing",
    )

    opt = rec.add_argument_group(
        "reconstruction (units optional: bare numbers are in the unit in brackets; defaults: the solver's, "
        "or the resumed run's)"
    )
    # Every option's flag, help and default come from its one declaration.
    add_arguments(opt, ALL_OPTIONS)
    opt.add_argument(
        "--thickness",
        metavar="L",
        help='initial total thickness, split over the slices ["10 nm"]; instead of --slice-thickness',
    )
    opt.add_argument("--checkpoint", metavar="PATH", help="write the state to PATH every few iterations")
    opt.add_argument("--resume", metavar="PATH", help="continue from a checkpoint or a saved result")

    demo = sub.add_parser(
        "demo",
        help="simulate a tilted crystal and reconstruct it with APP and FPP",
        description=(
            "Simulate a small SrTiO3 [001] crystal tilted by (8, -3) mrad, 78 Å thick, reconstruct it with "
            "APP and FPP, and print the recovered tilt and thickness against the truth."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument(
        "--iterations", metavar="N", type=int, help="iterations per reconstruction (default: demo's)"
    )
    demo.add_argument(
        "--quick", action="store_true", help="a few iterations only (a smoke test, not converged)"
    )
    demo.add_argument("--output", metavar="DIR", help="also write the results (.hspy) and PNG summaries here")
    demo.add_argument("--overwrite", action="store_true", help="replace existing files in DIR")
    demo.add_argument("--device", default="cpu", help="torch device")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return parser


# ---------------------------------------------------------------------------
# reconstruct


def _output_paths(args) -> tuple[Path, Path | None]:
    src = Path(args.file)
    if args.output:
        out = Path(args.output)
    else:
        stem = src.name[: -len(src.suffix)] if src.suffix else src.name
        out = src.with_name(f"{stem}_{args.mode or SolverConfig().mode}.hspy")
    if out.suffix.lower() not in RESULT_EXTENSIONS:
        raise CLIError(
            f"-o {out}: the result is written as .hspy (HDF5) or .zspy (zarr); give one of these extensions."
        )
    summary = None if args.no_summary else Path(args.summary) if args.summary else out.with_suffix(".png")
    for path in (out, summary):
        if path is not None and path.exists() and not args.overwrite:
            raise CLIError(
                f"{path} exists; choose another path with -o/--summary, or pass --overwrite to replace it."
            )
    if out.resolve() == src.resolve():
        raise CLIError(f"-o {out} is the input file; choose another output path.")
    if not out.parent.exists():
        raise CLIError(f"The output folder {out.parent} does not exist; create it first.")
    if args.checkpoint:
        ck = Path(args.checkpoint)
        if not ck.resolve().parent.is_dir():
            raise CLIError(f"--checkpoint {ck}: the folder {ck.parent} does not exist; create it first.")
        resuming_same = args.resume and Path(args.resume).resolve() == ck.resolve()
        if ck.exists() and not args.overwrite and not resuming_same:
            raise CLIError(f"Checkpoint {ck} exists; resume from it with --resume {ck}, or pass --overwrite.")
    if args.resume and not Path(args.resume).exists():
        raise CLIError(f"--resume {args.resume}: no such file.")
    return out, summary


def _calibration(args) -> dict:
    """The calibration flags as ``set_experimental_parameters`` arguments, checked before any loading.

    The checks are those of :mod:`app_extension.signals.calibration`, so the
    command line and ``s.set_experimental_parameters`` accept the same values.
    """
    from .signals import calibration as c
    from .units import CalibrationError

    cal = {}
    try:
        if args.beam_energy is not None:
            cal["beam_energy"] = c.energy_keV(args.beam_energy, "--beam-energy")
        if args.convergence_angle is not None:
            cal["convergence_angle"] = c.convergence_mrad(args.convergence_angle, "--convergence-angle")
        if args.scan_step is not None:
            cal["scan_step"] = c.scan_step_A(args.scan_step, "--scan-step")
        if args.detector_sampling is not None:
            parse_detector_sampling(args.detector_sampling, "--detector-sampling")  # units required here
            value, units = c.detector_scale(args.detector_sampling, "--detector-sampling")
            cal["detector_sampling"] = f"{value!r} {units}"
    except CalibrationError as error:
        raise CLIError(str(error)) from None
    return cal


def _reconstruct_kwargs(args) -> dict:
    """The ``ptycho_app`` options given on the command line, checked against their declarations."""
    kwargs = {"show_progressbar": not args.quiet}
    for name, opt in ALL_OPTIONS.items():
        value = getattr(args, name, None)
        if value is None or not opt.cli:
            continue
        try:
            kwargs[name] = check(opt, value, where=opt.flag)
        except OptionError as error:
            raise CLIError(str(error)) from None
    if args.thickness is not None:
        if args.slice_thickness is not None:
            raise CLIError("Give either --thickness or --slice-thickness, not both.")
        if args.resume:
            raise CLIError("--thickness sets the start of a new run; leave it out with --resume.")
        num_slices = kwargs.get("num_slices", SolverConfig().num_slices)
        total = parse_length(args.thickness, "--thickness")
        if total <= 0:
            raise CLIError(f"--thickness {args.thickness!r} must be positive.")
        kwargs["slice_thickness"] = total / num_slices
    if args.checkpoint:
        kwargs["checkpoint"] = args.checkpoint
    if args.resume:
        kwargs["resume"] = args.resume
    return kwargs


#: The calibration flags, by calibration item (as named in UncalibratedError.missing / CalibrationError).
_FLAG_HINTS = {
    "beam_energy": '--beam-energy "300 kV"',
    "convergence_angle": '--convergence-angle "22 mrad"',
    "scan_step": '--scan-step "0.39 Å"',
    "detector_sampling": '--detector-sampling "1 mrad" (or "0.0508 1/Å")',
}


def _calibration_hint(items, given=()) -> str:
    """The flags that give the calibration ``items``, leaving out those already ``given``."""
    flags = [_FLAG_HINTS[k] for k in items if k in _FLAG_HINTS and k not in given]
    if not flags:
        flags = [flag for key, flag in _FLAG_HINTS.items() if key not in given] or list(_FLAG_HINTS.values())
    return "On the command line, give the calibration as flags, e.g.: " + " ".join(flags)


def _check_device(device: str) -> None:
    try:
        check_device(device, "--device")
    except OptionError as error:
        raise CLIError(str(error)) from None


def _launch_rank() -> int:
    """This process's rank as torchrun set it (0 outside torchrun), before the process group exists."""
    if os.environ.get("APP_EXTENSION_DISTRIBUTED", "1") == "0":
        return 0
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _memory_lines(node, verbose: bool) -> list[str]:
    """The preflight's estimate (metadata ``Memory_estimate``) as report lines."""
    from .solver.memory import MemoryEstimate

    if not node.has_item("Memory_estimate"):
        return []
    estimate = MemoryEstimate.from_dict(node.Memory_estimate.as_dictionary())
    lines = [f"  memory (preflight estimate of the peak): {estimate.brief()}"]
    if verbose:
        lines.append(f"  {estimate.summary()}")
    return lines


def _run_reconstruct(args) -> int:
    from .load import LoadError, load_4dstem
    from .units import CalibrationError, UncalibratedError

    if _launch_rank() != 0:  # under torchrun: rank 0 gives the warnings (every rank would repeat them)
        warnings.simplefilter("ignore")
        logging.getLogger("app_extension").setLevel(logging.ERROR)
    out, summary = _output_paths(args)
    calibration = _calibration(args)
    kwargs = _reconstruct_kwargs(args)
    try:
        signal = load_4dstem(args.file, scan_shape=args.scan_shape, index=args.signal_index, lazy=True)
    except LoadError as error:
        raise CLIError(str(error)) from error
    if args.clip_negative:
        signal.data = signal.data.clip(min=0)
    try:
        signal.set_signal_type("ptychography")
    except Exception as error:  # noqa: BLE001
        raise CLIError(f"Could not make the data a 'ptychography' signal: {error}") from error
    method = getattr(signal, "ptycho_app", None)
    if method is None:
        raise CLIError(
            "The 'ptychography' signal type is not registered with HyperSpy (is app_extension installed? "
            "Try 'pip install -e .' in the repository)."
        )
    if calibration:
        signal.set_experimental_parameters(**calibration)
    rotation = signal.metadata.get_item("Acquisition_instrument.TEM.scan_rotation")
    if "scan_rotation" not in kwargs and rotation is not None:
        kwargs["scan_rotation"] = float(rotation)  # e.g. py4DSTEM's QR rotation, in degrees
    shape = signal.data.shape
    what = [kwargs.get("mode", "app").upper()]
    if "num_slices" in kwargs:
        what.append(f"{kwargs['num_slices']} slices")
    if "iterations" in kwargs:
        what.append(f"{kwargs['iterations']} iterations")
    processes = (
        int(os.environ.get("WORLD_SIZE", "1")) if os.environ.get("APP_EXTENSION_DISTRIBUTED") != "0" else 1
    )
    if processes > 1:
        what.append(f"{processes} processes")
    if _launch_rank() == 0:
        print(
            f"{PROG}: {args.file}: scan {shape[0]} x {shape[1]}, patterns {shape[2]} x {shape[3]}; "
            + ", ".join(what)
            + (f", resuming {args.resume}" if args.resume else ""),
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # ptycho_app's advice for Python users; the command line gives its own (--resume) below.
            warnings.filterwarnings(
                "ignore", message="The reconstruction stopped early", category=UserWarning
            )
            result = method(**kwargs)
    except UncalibratedError as error:
        raise CLIError(f"{error}\n{_calibration_hint(error.missing, given=calibration)}") from error
    except CalibrationError as error:
        flags = ", ".join(_FLAG_HINTS[k].split()[0] for k in error.parameters if k in _FLAG_HINTS)
        raise CLIError(f"{error}\nOn the command line: check {flags or 'the calibration flags'}.") from error
    except ValueError as error:
        if "negative intensities" in str(error) and not args.clip_negative:
            raise CLIError(
                f"{error}\nOn the command line, pass --clip-negative to set them to zero."
            ) from error
        raise
    elapsed = time.perf_counter() - t0
    node = result.metadata.Signal.Ptychography
    status = str(node.get_item("status", "ok"))
    from .solver.distributed import is_writer

    if not is_writer():  # another rank of a torchrun launch: rank 0 writes and reports
        return 130 if status == "interrupted" else 1 if status == "diverged" else 0
    result.save(out, overwrite=True)
    if summary is not None:
        from .report import save_summary

        save_summary(result, summary)
    print(f"{PROG}: {status} after {int(node.iterations)} iterations in total ({elapsed:.1f} s this run)")
    if node.has_item("Calibration.json"):
        import json

        from .measurements import CalibrationReport

        report = CalibrationReport.from_dict(json.loads(str(node.Calibration.json)))
        print("\n".join("  " + line for line in str(report).splitlines()))
    print(f"  tilt (theta_x, theta_y): ({node.tilt_x:.2f}, {node.tilt_y:.2f}) mrad, scan frame")
    if node.has_item("Post_alignment"):
        pa = node.Post_alignment
        print(f"  FPP post-alignment tilt: ({pa.tilt_x:.2f}, {pa.tilt_y:.2f}) mrad")
    print(
        f"  slice thickness: {node.slice_thickness:.2f} Å x {int(node.num_slices)} = {node.thickness / 10:.2f} nm"
    )
    for line in _memory_lines(node, args.verbose):
        print(line)
    print(f"  result: {out}")
    if summary is not None:
        print(f"  summary: {summary}")
    if status == "interrupted":
        print(
            f"{PROG}: interrupted after iteration {int(node.iterations)}; the result so far was written to "
            f"{out}.\nContinue it with: {PROG} reconstruct {args.file} --resume {out} --overwrite "
            "(with the calibration flags given now)",
            file=sys.stderr,
        )
        return 130
    if status == "diverged":
        print(
            f"{PROG}: the loss became non-finite; the last good state was written to {out}. Check the "
            f"calibration, or continue with smaller steps: {PROG} reconstruct {args.file} --resume {out} "
            "--overwrite --lr-object 0.01.",
            file=sys.stderr,
        )
        return 1
    return 0


# ---------------------------------------------------------------------------
# demo


def _run_demo(args) -> int:
    from .demo import DEMO_ITERATIONS, QUICK_ITERATIONS, format_demo, run_demo

    iterations = args.iterations or (QUICK_ITERATIONS if args.quick else DEMO_ITERATIONS)
    _check_device(args.device)
    outdir = Path(args.output) if args.output else None
    if outdir is not None:
        outdir.mkdir(parents=True, exist_ok=True)
        existing = [p for p in outdir.glob("demo_*") if p.suffix in (".hspy", ".png")]
        if existing and not args.overwrite:
            raise CLIError(f"{outdir} already holds demo results ({existing[0].name}); pass --overwrite.")
    print(
        f"{PROG} demo: simulating a tilted SrTiO3 crystal and reconstructing it with APP and FPP ...",
        file=sys.stderr,
    )
    numbers = run_demo(
        iterations=iterations, device=args.device, show_progressbar=not args.quiet, output_dir=outdir
    )
    print(format_demo(numbers))
    return 0


# ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``app-ptycho`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # usage errors (exit 2) and --help (exit 0), already printed
        return int(stop.code or 0)
    # these import torch, which --help and a usage error do not need
    from .solver.memory import MemoryPreflightError
    from .solver.serialize import NotAStateError

    try:
        if args.command == "reconstruct":
            return _run_reconstruct(args)
        return _run_demo(args)
    except (CLIError, OptionError, NotAStateError, MemoryPreflightError) as error:
        if args.debug:
            raise
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError, RuntimeError) as error:
        if args.debug:
            raise
        print(f"{PROG}: error: {type(error).__name__}: {error}", file=sys.stderr)
        print(f"{PROG}: (run with --debug for the full traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
