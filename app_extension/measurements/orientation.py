"""Scan-detector rotation and transpose from the centre-of-mass (COM) field.

The COM of each pattern, measured from the disk centre, is the mean momentum
transfer: for a thin specimen it is proportional to the gradient of the
projected potential, a curl-free field *in the specimen frame*. Expressed in
the scan frame with the wrong rotation it acquires a curl. The rotation that
minimises ``sum curl^2`` has a closed form (the curl is linear in cos and
sin of the angle), once for the raw detector axes and once for the
transposed ones; the transpose with the smaller residual curl wins.

The curl cannot tell φ from φ + 180°. For a weak phase object the COM field
points *towards* the atoms (the field converges on them), so its integral
(the iDPC image) has sharp positive peaks: the sign is taken from the
skewness of the iDPC image. In thick crystals this can fail, which is why the
stage prefers the parallax fit's sign (which relies on the sign of the
nominal defocus) and reports both.

Frames: COM vectors are in raw detector pixels (row, col). The rotation φ is
the scan rotation of :meth:`Geometry.raster`: the fast scan axis points along
``(cos φ, sin φ)`` in the detector's (x = col, y = row) frame.
"""

from __future__ import annotations

import numpy as np

__all__ = ["centre_of_mass", "rotation_from_com", "scan_to_detector", "to_scan_frame", "integrate_gradient"]


def scan_to_detector(rotation_deg: float) -> np.ndarray:
    """2x2 matrix J taking a (y, x) vector in the scan frame to the detector frame."""
    a = np.deg2rad(rotation_deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, s], [-s, c]])


def centre_of_mass(patterns: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """COM (row, col) of each pattern minus its disk centre, (B, 2) px."""
    patterns = np.asarray(patterns, dtype=np.float64)
    n, m = patterns.shape[-2:]
    total = patterns.sum(axis=(-2, -1))
    total = np.where(total > 0, total, 1.0)
    row = (patterns.sum(axis=-1) @ np.arange(n)) / total
    col = (patterns.sum(axis=-2) @ np.arange(m)) / total
    return np.stack([row, col], axis=-1) - np.asarray(centres)


def to_scan_frame(vectors: np.ndarray, rotation_deg: float, transposed: bool) -> np.ndarray:
    """Raw-detector (row, col) vectors (..., 2) expressed in the scan frame (y, x)."""
    v = np.asarray(vectors, dtype=np.float64)
    if transposed:
        v = v[..., ::-1]
    return v @ scan_to_detector(rotation_deg)  # J^T v, row-vector form


def _derivatives(field: np.ndarray, step: tuple[float, float]):
    dy_y = np.gradient(field[..., 0], step[0], axis=0)
    dx_y = np.gradient(field[..., 0], step[1], axis=1)
    dy_x = np.gradient(field[..., 1], step[0], axis=0)
    dx_x = np.gradient(field[..., 1], step[1], axis=1)
    return dy_y, dx_y, dy_x, dx_x


def integrate_gradient(field: np.ndarray, step: tuple[float, float]) -> np.ndarray:
    """Least-squares (Fourier) integral of a (sy, sx, 2) gradient field (y, x components)."""
    sy, sx = field.shape[:2]
    pad = np.pad(field, ((0, sy), (0, sx), (0, 0)), mode="reflect")
    ky = np.fft.fftfreq(2 * sy, d=step[0])[:, None]
    kx = np.fft.fftfreq(2 * sx, d=step[1])[None, :]
    k2 = ky**2 + kx**2
    k2[0, 0] = 1.0
    fy, fx = np.fft.fft2(pad[..., 0]), np.fft.fft2(pad[..., 1])
    phi = (ky * fy + kx * fx) / (2j * np.pi * k2)
    phi[0, 0] = 0
    return np.real(np.fft.ifft2(phi))[:sy, :sx]


def _skewness(image: np.ndarray) -> float:
    v = image - image.mean()
    sd = v.std()
    return float(np.mean(v**3) / sd**3) if sd > 0 else 0.0


def rotation_from_com(com: np.ndarray, step: tuple[float, float]) -> dict:
    """Rotation (deg) and transpose that make the COM field curl-free.

    Parameters
    ----------
    com
        (sy, sx, 2) COM field in raw detector pixels (row, col).
    step
        Scan step (y, x) in Å.

    Returns
    -------
    dict
        ``rotation_deg`` (sign from the iDPC skewness), ``rotation_mod180_deg``
        (in [-90, 90)), ``transposed``, ``curl_fraction`` {False: f, True: f}
        (residual curl power / total derivative power for each transpose),
        ``idpc_skewness`` and ``confident_sign`` (skewness clearly nonzero).
    """
    com = np.asarray(com, dtype=np.float64)
    if com.ndim != 3 or com.shape[-1] != 2 or min(com.shape[:2]) < 3:
        raise ValueError(f"The COM field must be (scan_y >= 3, scan_x >= 3, 2), got shape {com.shape}.")
    com = com - com.mean(axis=(0, 1))
    results = {}
    for transposed in (False, True):
        v = com[..., ::-1] if transposed else com
        dy_y, dx_y, dy_x, dx_x = _derivatives(v, step)
        # In the scan frame (J^T v): curl = cos * curl0 - sin * div0 (see module docstring).
        a = (dx_y - dy_x)[1:-1, 1:-1].ravel()
        b = (dx_x + dy_y)[1:-1, 1:-1].ravel()
        mat = np.array([[a @ a, -(a @ b)], [-(a @ b), b @ b]])
        evals, evecs = np.linalg.eigh(mat)
        c, s = evecs[:, 0]
        angle = float(np.degrees(np.arctan2(s, c)))
        total = a @ a + b @ b
        results[transposed] = (angle, float(evals[0] / total) if total > 0 else 1.0)
    transposed = results[True][1] < results[False][1]
    angle = results[transposed][0]
    angle_mod = (angle + 90.0) % 180.0 - 90.0
    field = to_scan_frame(com, angle_mod, transposed)
    skew = _skewness(integrate_gradient(field, step))
    rotation = angle_mod if skew >= 0 else angle_mod + 180.0
    rotation = (rotation + 180.0) % 360.0 - 180.0
    return {
        "rotation_deg": float(rotation),
        "rotation_mod180_deg": float(angle_mod),
        "transposed": bool(transposed),
        "curl_fraction": {"False": results[False][1], "True": results[True][1]},
        "idpc_skewness": skew,
        "confident_sign": bool(abs(skew) > 0.2),
    }
