"""The measured patterns as the solver uses them: checked, scaled, on the model grid.

:class:`MeasuredData` is the only place the optimisation loop reads data from:
``targets(batch)`` gives the values the loss compares with for a batch of scan
positions, in numpy FFT order (DC at pixel [0, 0]) on the model window, and
``mask`` the detector pixels the loss uses (padding and bad pixels excluded).
"""

from __future__ import annotations

import numpy as np
import torch

from ..physics.optics import fourier_grid
from .config import Geometry, SolverConfig

__all__ = ["check_intensities", "MeasuredData"]


def check_intensities(intensities, num_positions: int | None = None) -> np.ndarray:
    """Check the measured patterns and return them as float32 (P, N, N).

    Accepts (P, N, N) or (scan_y, scan_x, N, N) arrays (numpy, dask, torch).
    """
    data = intensities
    if hasattr(data, "compute") and not isinstance(data, np.ndarray):
        data = data.compute()
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    data = np.asarray(data)
    if data.ndim == 4:
        data = data.reshape(-1, *data.shape[-2:])
    if data.ndim != 3:
        raise ValueError(
            f"Expected 4D-STEM data of shape (scan_y, scan_x, ky, kx) or (positions, ky, kx); "
            f"got an array of {data.ndim} dimension(s) {data.shape}."
        )
    if data.shape[-1] != data.shape[-2]:
        raise ValueError(
            f"Diffraction patterns must be square, got {data.shape[-2]} x {data.shape[-1]} pixels; "
            "crop or pad the detector axes first."
        )
    if num_positions is not None and data.shape[0] != num_positions:
        raise ValueError(f"{data.shape[0]} patterns but {num_positions} scan positions were given.")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise TypeError(f"Intensities must be real numbers, got dtype {data.dtype}.")
    data = data.astype(np.float32, copy=False)
    bad = ~np.isfinite(data)
    if bad.any():
        raise ValueError(
            f"The data contain {int(bad.sum())} NaN or infinite value(s) "
            f"(first at pattern {int(np.argwhere(bad)[0][0])}); replace them, e.g. with 0 or "
            "the mean of their neighbours, before reconstructing."
        )
    if data.min() < 0:
        raise ValueError(
            f"The data contain negative intensities (minimum {float(data.min()):.3g}, "
            f"{int((data < 0).sum())} pixels); subtract the dark reference and clip at zero, "
            "e.g. numpy.clip(data, 0, None)."
        )
    if data.sum() <= 0:
        raise ValueError("The data are all zero.")
    return data


def _check_mask(mask, n: int) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != (n, n) or mask.dtype != bool:
        raise ValueError(
            f"detector_mask must be a boolean ({n}, {n}) array (True = use the pixel), "
            f"got {mask.dtype} {mask.shape}."
        )
    if not mask.any():
        raise ValueError("detector_mask excludes every pixel.")
    return mask


class MeasuredData:
    """Measured patterns on the model grid, plus the precomputed frequency grids.

    Parameters
    ----------
    intensities
        (P, N, N) or (scan_y, scan_x, N, N), optic axis at pixel N // 2.
    geometry, config
        The scan positions (their number must match) and the options
        (``padded_size``, ``loss``).
    device
        Where the targets live.
    detector_mask
        Optional boolean (N, N) array, True for the pixels the loss uses
        (False for hot, dead or otherwise bad pixels).
    """

    def __init__(
        self,
        intensities,
        geometry: Geometry,
        config: SolverConfig,
        device,
        detector_mask: np.ndarray | None = None,
    ):
        data = check_intensities(intensities, geometry.scan_positions.shape[0])
        n = data.shape[-1]
        detector_mask = _check_mask(detector_mask, n)
        window = config.padded_size or n
        if window < n:
            raise ValueError(f"padded_size ({window}) must be >= the pattern size ({n}).")
        self.window = window
        self.pattern_size = n
        self.device = torch.device(device)
        if detector_mask is not None:
            data = data * detector_mask.astype(np.float32)
        # Patterns are scaled so that their mean pixel value is 1 (the probe's mean
        # intensity per pixel is then 1 too): learning rates do not depend on the
        # detector's units (counts, electrons, normalised). Masked pixels are
        # counted at the mean of the used ones.
        used = 1.0 if detector_mask is None else detector_mask.mean()
        self.intensity_scale = float(n * n * used / data.sum(axis=(1, 2)).mean())
        data = data * np.float32(self.intensity_scale)
        # The mean pattern sum after scaling: the probe's total intensity. With
        # padding it is still n * n, since the measured pixels hold (nearly) all of it.
        self.mean_intensity = float(n * n)
        # Patterns go to numpy FFT order (DC at [0, 0]) on the model grid once,
        # so the loop never shifts arrays. Unmeasured (padding) and masked pixels
        # are left out of the loss.
        mask = (
            np.ones((n, n), dtype=np.float32) if detector_mask is None else detector_mask.astype(np.float32)
        )
        if window > n:
            padded = np.zeros((data.shape[0], window, window), dtype=np.float32)
            start = window // 2 - n // 2
            padded[:, start : start + n, start : start + n] = data
            full = np.zeros((window, window), dtype=np.float32)
            full[start : start + n, start : start + n] = mask
            data, mask = padded, full
        self.mask = None if mask.all() else torch.as_tensor(np.fft.ifftshift(mask)).to(self.device)
        shifted = np.fft.ifftshift(data, axes=(-2, -1))
        intensities = torch.as_tensor(np.ascontiguousarray(shifted)).to(self.device)
        self.num_positions = data.shape[0]
        # Only what the loss compares with is kept (amplitudes for Eq. 1,
        # intensities for Poisson), and the loss normaliser of the history.
        if config.loss == "amplitude":
            self._target = intensities.sqrt_()
            self.norm = float(data.sum(dtype=np.float64))
        else:
            self._target = intensities
            self.norm = float(self.num_positions)

    def targets(self, batch: torch.Tensor) -> torch.Tensor:
        """What the loss compares with for these scan positions, (B, W, W) on the device."""
        return self._target[batch]

    def grids(self, sampling: float):
        """(ky, kx) spatial-frequency grids of the model window, 1/Å."""
        return fourier_grid((self.window, self.window), sampling, device=self.device)
