"""Lateral drift of object slices with depth, and its removal.

Used twice:

* FPP post-alignment (the standard misorientation fix): cross-correlate the
  reconstructed slices, report their shifts and the tilt the shifts imply,
  and return the aligned slices and their average.
* APP drift step: the slices' remaining drift with depth is moved into the
  tilt of the propagator. With tilt ``t`` and slices ``o_s``, the pair
  ``(t + c, o_s(x + z_s c))`` gives the same patterns, so the step changes no
  prediction; it only chooses, among equivalent solutions, the one whose
  slices are aligned, which is what the tilt means.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "register_shift",
    "slice_shifts",
    "fit_drift",
    "fourier_shift",
    "post_align",
]


def _window(shape: tuple[int, int]) -> np.ndarray:
    return np.outer(np.hanning(shape[0]), np.hanning(shape[1]))


def _upsampled_dft(data: np.ndarray, size: int, factor: int, offsets: np.ndarray) -> np.ndarray:
    """Inverse DFT of ``data`` on a ``size`` x ``size`` grid of spacing 1/factor px around ``offsets``."""
    ny, nx = data.shape
    fy = np.fft.ifftshift(np.arange(ny)) - ny // 2
    fx = np.fft.ifftshift(np.arange(nx)) - nx // 2
    ry = np.arange(size) - offsets[0]
    rx = np.arange(size) - offsets[1]
    ky = np.exp(2j * np.pi / (ny * factor) * np.outer(ry, fy))
    kx = np.exp(2j * np.pi / (nx * factor) * np.outer(fx, rx))
    return ky @ data @ kx


def register_shift(
    reference: np.ndarray, moving: np.ndarray, upsample: int = 100, refine: int = 2
) -> np.ndarray:
    """Shift (dy, dx) in pixels by which ``moving`` is displaced from ``reference``.

    Cross-correlation with the peak refined by a local upsampled DFT
    (precision 1/``upsample`` pixel). Both images are mean-subtracted and
    Hann-windowed first. The fixed window biases a single estimate towards
    zero shift (by a few percent of the shift), so ``moving`` is shifted back
    by the estimate and the residual measured again, ``refine`` times.
    """
    shift = _correlation_peak(reference, moving, upsample)
    for _ in range(refine):
        back = fourier_shift(np.asarray(moving, dtype=np.float64)[None], -shift[None])[0]
        shift = shift + _correlation_peak(reference, back, upsample)
    return shift


def _correlation_peak(reference: np.ndarray, moving: np.ndarray, upsample: int) -> np.ndarray:
    """One windowed cross-correlation estimate of the shift, see :func:`register_shift`."""
    win = _window(reference.shape)
    a = np.fft.fft2((reference - reference.mean()) * win)
    b = np.fft.fft2((moving - moving.mean()) * win)
    product = b * a.conj()
    cc = np.fft.ifft2(product)
    peak = np.array(np.unravel_index(np.argmax(np.abs(cc)), cc.shape), dtype=float)
    shape = np.array(cc.shape)
    peak[peak > shape // 2] -= shape[peak > shape // 2]
    if upsample > 1:
        size = int(np.ceil(upsample * 1.5))
        centre = size // 2
        offsets = centre - peak * upsample
        up = np.abs(_upsampled_dft(product, size, upsample, offsets))
        local = np.array(np.unravel_index(np.argmax(up), up.shape), dtype=float)
        peak = peak + (local - centre) / upsample
    return peak


def slice_shifts(
    phase: np.ndarray, roi: tuple[slice, slice] | None = None, upsample: int = 100
) -> np.ndarray:
    """Cumulative lateral shift of each slice relative to the first, (S, 2) px.

    Neighbouring slices are registered pairwise (they are the most alike) and
    the steps summed.
    """
    phase = np.asarray(phase, dtype=np.float64)
    if roi is not None:
        phase = phase[(slice(None), *roi)]
    steps = [np.zeros(2)]
    for s in range(1, phase.shape[0]):
        steps.append(register_shift(phase[s - 1], phase[s], upsample))
    return np.cumsum(np.array(steps), axis=0)


def fit_drift(shifts_px: np.ndarray, depths: np.ndarray) -> np.ndarray:
    """Least-squares slope (dy/dz, dx/dz) in px per Å of shifts against depth."""
    z = np.asarray(depths, dtype=np.float64)
    a = np.stack([z, np.ones_like(z)], axis=1)
    coef, *_ = np.linalg.lstsq(a, np.asarray(shifts_px, dtype=np.float64), rcond=None)
    return coef[0]


def fourier_shift(field: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """Shift each slice of a real (S, H, W) array by (dy, dx) px (periodic, sub-pixel)."""
    field = np.asarray(field)
    h, w = field.shape[-2:]
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    out = np.empty_like(field)
    for s in range(field.shape[0]):
        ramp = np.exp(-2j * np.pi * (fy * shifts_px[s, 0] + fx * shifts_px[s, 1]))
        out[s] = np.real(np.fft.ifft2(np.fft.fft2(field[s]) * ramp))
    return out


def post_align(
    phase: np.ndarray,
    slice_thickness: float,
    sampling: float,
    roi: tuple[slice, slice] | None = None,
    amplitude: np.ndarray | None = None,
) -> dict:
    """FPP post-alignment: measure the slices' drift, report the implied tilt, align.

    Parameters
    ----------
    phase
        Phase slices (S, H, W).
    slice_thickness, sampling
        dz and the pixel size, Å.
    roi
        Region (row, column slices) used for the registration, e.g. the scanned
        field.
    amplitude
        Amplitude slices to align as well.

    Returns
    -------
    dict
        ``shifts`` (S, 2) measured shifts (dy, dx) in Å; ``tilt_mrad``
        (theta_x, theta_y) implied by a straight-line fit; ``aligned_phase``,
        ``mean_phase`` (and ``aligned_amplitude``) after shifting each slice
        back by its measured shift.
    """
    shifts = slice_shifts(phase, roi)
    depths = np.arange(shifts.shape[0]) * slice_thickness
    slope = fit_drift(shifts, depths) * sampling  # Å per Å
    tilt = np.arctan(slope[::-1]) * 1e3  # (theta_x, theta_y) in mrad
    aligned = fourier_shift(phase, -shifts)
    out = {
        "shifts": shifts * sampling,
        "tilt_mrad": tilt,
        "aligned_phase": aligned,
        "mean_phase": aligned.mean(axis=0),
    }
    if amplitude is not None:
        out["aligned_amplitude"] = fourier_shift(amplitude, -shifts)
    return out
