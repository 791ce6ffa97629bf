"""Benchmark worker: the FFT-only floor of one iteration (torch, same threads, run in /work/venv).

A multislice model with S slices and M probe modes needs, per scan position and
mode, ``2 S - 1`` FFTs in the forward pass (an FFT/IFFT pair for each of the
S - 1 propagations and one to the far field) plus one for the sub-pixel probe
shift, so ``F = 2 S`` two-dimensional FFTs; the backward pass needs about
``2 F`` more. This worker times ``torch.fft.fft2``/``ifft2`` (``norm="ortho"``,
complex64, into preallocated outputs) on one batch of shape
(batch, M, N, N), takes the median of several repeats, and scales it to a full
pass over all positions: ``floor = 3 F * positions / batch * t_batch``.
Nothing else (no elementwise work, no gathers, no optimizer) is counted, so no
code can beat it on these threads.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, load_dataset, new_record, set_threads, worker_args


def main(argv=None) -> None:
    p = worker_args(__doc__)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    set_threads(args.threads)
    import torch

    ds = load_dataset(args.data)
    positions, n = ds.intensities.shape[0], ds.intensities.shape[-1]
    rec = new_record(
        "FFT floor",
        "floor",
        args,
        ds,
        iterations=args.repeats,
        versions={"torch": torch.__version__},
    )
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.probe_modes, n, n)
    x = torch.complex(torch.randn(shape, generator=gen), torch.randn(shape, generator=gen))
    # Preallocated outputs: the floor is the transforms alone, not the allocator's
    # page faults for fresh 8 MB arrays (which made earlier floors noisy and high).
    y = torch.empty_like(x)
    z = torch.empty_like(x)
    for _ in range(3):  # warm-up: plans
        torch.fft.ifft2(torch.fft.fft2(x, norm="ortho", out=y), norm="ortho", out=z)
    per_batch = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        torch.fft.fft2(x, norm="ortho", out=y)
        torch.fft.ifft2(y, norm="ortho", out=z)
        per_batch.append((time.perf_counter() - t0) / 2)
        rec.iter_load.append([round(v, 2) for v in __import__("os").getloadavg()])
    t_batch = statistics.median(per_batch)
    ffts_forward = 2 * args.slices  # 2S - 1 + probe shift
    batches = positions / args.batch_size
    rec.iter_seconds = [3 * ffts_forward * batches * t for t in per_batch]
    rec.extra.update(
        {
            "seconds_per_batched_fft": t_batch,
            "seconds_per_2d_fft": t_batch / (args.batch_size * args.probe_modes),
            "ffts_per_position_mode_forward": ffts_forward,
            "ffts_per_position_mode_total": 3 * ffts_forward,
            "floor_forward_only_s": ffts_forward * batches * t_batch,
            "floor_s_per_iteration": 3 * ffts_forward * batches * t_batch,
            "floor_s_per_iteration_min": 3 * ffts_forward * batches * min(per_batch),
        }
    )
    emit(rec)


if __name__ == "__main__":
    main()
