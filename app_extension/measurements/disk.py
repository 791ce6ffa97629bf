"""Convergence semi-angle from the bright-field disk radius, and the sanity check.

The disk radius in pixels times the detector pixel (mrad) is the convergence
semi-angle. A mismatch with the nominal angle means that one of the two
calibrations is wrong; which one cannot be told from the disk alone. The
condenser aperture is a fixed part whose angle is usually calibrated once,
while the detector pixel depends on the camera length (and binning), so the
pixel size is the more likely culprit, and a ratio near 2 or 1/2 points to
binning.
"""

from __future__ import annotations

__all__ = ["check_semiangle"]


def check_semiangle(
    radius_px: float, pixel_mrad: float, nominal_mrad: float, tolerance: float = 0.05
) -> tuple[float, str]:
    """Measured semi-angle (mrad) and a warning text ('' when within ``tolerance``).

    Parameters
    ----------
    radius_px
        Bright-field disk radius in detector pixels.
    pixel_mrad
        Stated detector pixel size in mrad.
    nominal_mrad
        Stated convergence semi-angle in mrad.
    tolerance
        Relative difference that triggers the warning (0.05 = 5 %).
    """
    if radius_px <= 0 or pixel_mrad <= 0 or nominal_mrad <= 0:
        raise ValueError("radius_px, pixel_mrad and nominal_mrad must be positive.")
    measured = float(radius_px * pixel_mrad)
    ratio = measured / nominal_mrad
    if abs(ratio - 1) <= tolerance:
        return measured, ""
    pixel_fix = nominal_mrad / radius_px
    hint = ""
    for factor in (2.0, 0.5, 4.0, 0.25):
        if abs(ratio / factor - 1) < tolerance:
            hint = f" The ratio is close to {factor:g}: check the detector binning."
    warning = (
        f"The bright-field disk has a radius of {radius_px:.2f} px, i.e. {measured:.2f} mrad at the stated "
        f"{pixel_mrad:.4g} mrad per pixel, but the stated convergence semi-angle is {nominal_mrad:.2f} mrad "
        f"({100 * (ratio - 1):+.1f} %). Either the detector pixel size is wrong (more likely, it depends on "
        f"the camera length): set detector_sampling='{pixel_fix:.4g} mrad'; or the convergence angle is "
        f"wrong: set convergence_angle={measured:.2f} (or use_measured_semiangle=True).{hint}"
    )
    return measured, warning
