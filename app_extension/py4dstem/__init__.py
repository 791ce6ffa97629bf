"""py4DSTEM front end: an APP reconstruction class and HyperSpy <-> DataCube conversion.

This subpackage needs py4DSTEM (which pins numpy<2), installed with the extra::

    pip install "app_extension[py4dstem]"

The rest of app_extension never imports it, so the core package works without
py4DSTEM. Importing this subpackage also lets ``py4DSTEM.read`` recognise saved
:class:`AdaptivePropagatorPtychography` results (emdfile's ``_emd_hook``).
"""

from __future__ import annotations

_INSTALL_HINT = 'pip install "app_extension[py4dstem]"'


def require_py4dstem():
    """Import and return py4DSTEM, or raise an ImportError naming the extra to install."""
    try:
        import py4DSTEM
    except ImportError as error:  # pragma: no cover - the test environment has it
        raise ImportError(
            f"app_extension.py4dstem needs py4DSTEM, which is not installed ({error}). "
            f"Install the optional dependencies with: {_INSTALL_HINT}"
        ) from error
    return py4DSTEM


require_py4dstem()

from .convert import datacube_to_signal, read_datacube_calibration, signal_to_datacube  # noqa: E402
from .reconstruction import AdaptivePropagatorPtychography  # noqa: E402

_emd_hook = True

__all__ = [
    "AdaptivePropagatorPtychography",
    "signal_to_datacube",
    "datacube_to_signal",
    "read_datacube_calibration",
    "require_py4dstem",
]
