"""Health checks of the measured patterns: empty (all-zero) patterns and detector saturation.

:func:`pattern_warnings` looks at the raw patterns (before any conversion to
float, so the detector's integer type is still known) and returns one message
per problem found; it raises when no pattern holds any counts.
:func:`warn_about_patterns` issues the messages as :class:`PatternWarning`.
``solver.data.check_intensities`` calls it, so every front end gets the same
checks.

The checks read the data in blocks of patterns, so they need no copy of the
whole array.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["PatternWarning", "pattern_warnings", "warn_about_patterns"]

#: Integer maxima a detector (or a conversion of its counts to float) clips at.
_INTEGER_MAXIMA = (255, 4095, 65535, 2**32 - 1)

#: A maximum held by at least this many pixels, and by more pixels than the 10 % just below it,
#: is a pile-up: the detector (or its readout) saturated.
_MIN_SATURATED = 10

_BLOCK = 256  # patterns per block


class PatternWarning(UserWarning):
    """The patterns look damaged (empty frames, saturation); the reconstruction still runs."""


def _positions(indices: np.ndarray, scan_shape: tuple[int, ...] | None, limit: int = 8) -> str:
    shown = indices[:limit]
    if scan_shape is not None and len(scan_shape) == 2:
        text = ", ".join(f"({int(i) // scan_shape[1]}, {int(i) % scan_shape[1]})" for i in shown)
        text = f"scan positions (row, column) {text}"
    else:
        text = "patterns " + ", ".join(str(int(i)) for i in shown)
    return text + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def pattern_warnings(data) -> list[str]:
    """Messages about empty and saturated patterns (an empty list when all is well).

    Parameters
    ----------
    data
        The measured patterns, (scan_y, scan_x, ky, kx) or (positions, ky, kx),
        in the detector's own type (numpy array or anything ``numpy.asarray``
        takes). Other shapes and non-numeric types are left to the caller's
        own checks.

    Returns
    -------
    list of str
        One message per problem: the count, the positions and what to do.

    Raises
    ------
    ValueError
        When every pattern is all zero.
    """
    data = np.asarray(data)
    if data.ndim not in (3, 4) or not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        return []
    scan_shape = data.shape[:2] if data.ndim == 4 else None
    stack = data.reshape(-1, *data.shape[-2:])
    count = stack.shape[0]
    empty, peak = [], None
    for start in range(0, count, _BLOCK):
        block = stack[start : start + _BLOCK]
        flat = block.reshape(block.shape[0], -1)
        with np.errstate(invalid="ignore"):
            nonzero = np.any(flat != 0, axis=1)
            top = np.nanmax(flat) if np.isfinite(flat).any() else None
        empty.extend(np.flatnonzero(~nonzero) + start)
        if top is not None and np.isfinite(top):
            peak = top if peak is None else max(peak, top)
    messages = []
    empty = np.asarray(empty, dtype=np.int64)
    if empty.size == count:
        raise ValueError(
            f"Every pattern is all zero ({count} of {count}): the data hold no counts. Check that the right "
            "dataset or signal was loaded (not a dark reference or an empty channel)."
        )
    if empty.size:
        messages.append(
            f"{empty.size} of {count} patterns are all zero ({_positions(empty, scan_shape)}): frames the "
            "detector dropped, or a blanked beam. They are fitted as if no electron arrived there; crop the "
            "scan to leave them out, or fill them (e.g. with the mean of their neighbours)."
        )
    saturated = _saturation(stack, peak)
    if saturated is not None:
        value, pixels, where = saturated
        messages.append(
            f"{pixels} pixels in {where.size} patterns sit at the value {value:g} "
            f"({_positions(where, scan_shape)}), the detector's maximum: they are saturated, and the "
            "reconstruction would fit clipped counts. Use data recorded with a lower dose or a shorter "
            "dwell time, or exclude those pixels (a detector mask)."
        )
    return messages


def _saturation(stack: np.ndarray, peak) -> tuple[float, int, np.ndarray] | None:
    """(value, number of pixels, patterns) of a saturated maximum, or None."""
    if peak is None or peak <= 0:
        return None
    integer = np.issubdtype(stack.dtype, np.integer)
    at_type_max = integer and peak == np.iinfo(stack.dtype).max
    at_known_max = float(peak) in _INTEGER_MAXIMA and float(peak) == round(float(peak))
    if not (integer or at_known_max):
        return None  # float data (e.g. simulations) may have a flat, exactly repeated maximum
    pixels, below, where = 0, 0, []
    for start in range(0, stack.shape[0], _BLOCK):
        block = stack[start : start + _BLOCK]
        hits = (block == peak).reshape(block.shape[0], -1).sum(axis=1)
        pixels += int(hits.sum())
        below += int(np.count_nonzero((block >= 0.9 * peak) & (block < peak)))
        where.extend(np.flatnonzero(hits) + start)
    if pixels < _MIN_SATURATED:
        return None
    if not (at_type_max or at_known_max) and (peak < 50 or pixels <= below):
        return None  # low counts, or a maximum that is not piled up
    return float(peak), pixels, np.asarray(where, dtype=np.int64)


def warn_about_patterns(data, stacklevel: int = 3) -> None:
    """Issue :func:`pattern_warnings` as :class:`PatternWarning` (raises when every pattern is zero)."""
    for message in pattern_warnings(data):
        warnings.warn(message, PatternWarning, stacklevel=stacklevel)
