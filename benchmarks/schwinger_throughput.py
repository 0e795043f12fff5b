"""Schwinger-model throughput: Wilson-Dirac applications and CG solves per second, direct and even-odd.

For each dtype, lattice size ``L`` and batch ``B`` the fields are ``B`` exact pure-gauge configurations at
``--beta`` (``sample_exact``: thermalized-looking fields, not Haar-random ones, on which CG is not
representative) and the sources complex normal; every solver below sees the same fields and sources.

- ``D/s``: applications of ``D`` (``apply_dirac`` with the links precomputed) per second, one per configuration
  (a batch of ``B`` counts ``B``);
- ``direct``: ``conjugate_gradient`` on ``D^dag D`` (``apply_normal``), to the action's default tolerance
  (1e-10 float64, 1e-5 float32): solves per second and iterations per solve;
- ``even-odd``: the same system through the even-odd Schur complement
  (``lattice_flows_schwinger.even_odd.solve_normal_even_odd``: two CG solves with ``D_hat^dag D_hat`` on the
  even sites, ``X = D^{-1} gamma_5 D^{-1} gamma_5 b``), its iterations (both solves) and the largest relative
  residual of the reconstructed ``X`` in the full system (it must be below the tolerance);
- ``schur``: one CG solve with ``D_hat^dag D_hat`` alone, which is what an even-odd pseudofermion action
  (``det D^dag D ~ det D_hat^dag D_hat``, pseudofermions on even sites) needs per force: ``schwinger`` with
  ``even_odd = true`` (its trajectories: ``benchmarks/schwinger_even_odd_hmc.py``).

Each time is the median over ``--repeats`` timings of a batch of calls after a warm-up, by default on the CPU
with one thread in CPU time of the process (``--clock cpu``: what the work costs, less disturbed by other jobs
on a shared machine), else in wall-clock time (``--clock wall``, always on a GPU). Rerun before quoting.

    python benchmarks/schwinger_throughput.py                                   # L = 8..32, B = 1 8 64, both dtypes
    python benchmarks/schwinger_throughput.py --sizes 64 --batches 1 8 --dtypes float64
    python benchmarks/schwinger_throughput.py --device cuda                     # timings synchronize the device
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from lattice_flows_schwinger.action import default_cg_tol
from lattice_flows_schwinger.cg import conjugate_gradient
from lattice_flows_schwinger.dirac import apply_dirac, apply_normal, complex_dtype, fermion_links
from lattice_flows_schwinger.even_odd import EvenOddOperator, solve_normal_even_odd
from lattice_flows_u1.exact_sampling import sample_exact


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


#: The clock of the timings: "cpu" (this process's CPU time, time.process_time: with one thread, what the work
#: costs, little disturbed by other jobs on a shared machine) or "wall" (time.perf_counter; needed on a GPU).
CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.perf_counter


def median_seconds(call, device: str, repeats: int, budget: float) -> float:
    """Median seconds per ``call()`` over ``repeats`` batches of calls, each batch about ``budget`` seconds."""
    _synchronize(device)
    t0 = clock()
    call()  # warm-up, and the probe for the batch size
    _synchronize(device)
    probe = clock() - t0
    n = max(1, int(budget / max(probe, 1e-7)))
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = clock()
        for _ in range(n):
            call()
        _synchronize(device)
        times.append((clock() - start) / n)
    return statistics.median(times)


def measure(L: int, batch: int, dtype: torch.dtype, args) -> dict:
    g = torch.Generator().manual_seed(args.seed + 1000 * L + batch)
    x = sample_exact(args.beta, batch, (L, L), generator=g, dtype=dtype).to(args.device)
    b = torch.randn(x.shape, generator=g, dtype=complex_dtype(dtype)).to(args.device)
    mass, tol = args.mass, default_cg_tol(dtype)
    u = fermion_links(x)
    operator = EvenOddOperator(x, mass, links=u)
    normal = lambda v: apply_normal(x, v, mass, links=u)  # noqa: E731
    out = {"L": L, "B": batch, "dtype": str(dtype).replace("torch.", "")}

    t = median_seconds(lambda: apply_dirac(x, b, mass, links=u), args.device, args.repeats, args.budget)
    out["D/s"] = batch / t

    direct = conjugate_gradient(normal, b, tol=tol, max_iter=args.max_iter)
    t_direct = median_seconds(lambda: conjugate_gradient(normal, b, tol=tol, max_iter=args.max_iter),
                              args.device, args.repeats, args.budget)
    out.update({"direct it": direct.iterations.double().mean().item(), "direct res": direct.residual.max().item(),
                "direct solves/s": batch / t_direct, "direct s": t_direct})

    eo = solve_normal_even_odd(x, b, mass, tol=tol, max_iter=args.max_iter, operator=operator)
    t_eo = median_seconds(lambda: solve_normal_even_odd(x, b, mass, tol=tol, max_iter=args.max_iter, operator=operator),
                          args.device, args.repeats, args.budget)
    scale = (eo.x - direct.x).abs().max() / direct.x.abs().max()
    out.update({"eo it": eo.iterations.double().mean().item(), "eo res": eo.residual.max().item(),
                "eo solves/s": batch / t_eo, "eo s": t_eo, "eo vs direct": scale.item()})

    be = operator.geometry.pack(b, 0)
    schur = conjugate_gradient(operator.schur_normal, be, tol=tol, max_iter=args.max_iter)
    t_schur = median_seconds(lambda: conjugate_gradient(operator.schur_normal, be, tol=tol, max_iter=args.max_iter),
                             args.device, args.repeats, args.budget)
    out.update({"schur it": schur.iterations.double().mean().item(), "schur s": t_schur})
    return out


HEADER = (f"{'dtype':>7} {'L':>3} {'B':>3} {'D/s':>9} | {'direct':>6} {'solves/s':>9} | "
          f"{'e-o it':>6} {'solves/s':>9} {'max res':>8} {'it ratio':>8} {'t ratio':>7} | {'schur it':>8} {'t ratio':>7}")


def format_row(r: dict) -> str:
    return (f"{r['dtype']:>7} {r['L']:>3} {r['B']:>3} {r['D/s']:>9.3g} | {r['direct it']:>6.1f} {r['direct solves/s']:>9.3g} | "
            f"{r['eo it']:>6.1f} {r['eo solves/s']:>9.3g} {r['eo res']:>8.1e} {r['eo it'] / r['direct it']:>8.3f} "
            f"{r['eo s'] / r['direct s']:>7.3f} | {r['schur it']:>8.1f} {r['schur s'] / r['direct s']:>7.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32], help="square lattice sizes L (even)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    p.add_argument("--beta", type=float, default=2.0, help="beta of the exact pure-gauge fields")
    p.add_argument("--mass", type=float, default=0.1)
    p.add_argument("--max-iter", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=3, help="timings per entry (the median is shown)")
    p.add_argument("--budget", type=float, default=0.3, help="approximate seconds per timing")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", choices=sorted(CLOCK), default="",
                   help="cpu: process CPU time (default on the CPU with one thread); wall: wall clock (default otherwise)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global clock
    name = args.clock or ("cpu" if args.device == "cpu" and torch.get_num_threads() == 1 else "wall")
    clock = CLOCK[name]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")

    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else (platform.processor() or platform.machine())
    print(f"# torch {torch.__version__}, {args.device} ({where}), {torch.get_num_threads()} thread(s) of "
          f"{os.cpu_count()} cores; the machine may be shared with other jobs: read ratios, not absolute rates")
    print(f"# clock: {name} ({'CPU time of this process' if name == 'cpu' else 'wall clock'}), median of {args.repeats} timings")
    print(f"# fields: exact pure-gauge configurations at beta = {args.beta}; mass = {args.mass}; CG tolerance "
          f"1e-10 (float64), 1e-5 (float32), relative residual per configuration; sources complex normal")
    print("# D/s: D applications per second (one per configuration); direct: iterations per solve of D^dag D, "
          "solves per second;")
    print("# e-o: the same solve via two Schur-complement solves on even sites (iterations of both), the largest "
          "full-system residual of the reconstructed X, and e-o / direct ratios of iterations and of time;")
    print("# schur: one D_hat^dag D_hat solve (an even-odd pseudofermion action's solve): its iterations, time / direct")
    print(HEADER, flush=True)
    rows = []
    for name in args.dtypes:
        dtype = getattr(torch, name)
        for L in args.sizes:
            for batch in args.batches:
                r = measure(L, batch, dtype, args)
                rows.append(r)
                print(format_row(r), flush=True)
    bad = [r for r in rows if r["eo res"] > default_cg_tol(getattr(torch, r["dtype"]))]
    for r in bad:
        print(f"# WARNING: {r['dtype']} L={r['L']} B={r['B']}: the even-odd solution's residual {r['eo res']:.2e} is above the tolerance")
    it = statistics.median(r["eo it"] / r["direct it"] for r in rows)
    tr = statistics.median(r["eo s"] / r["direct s"] for r in rows)
    st = statistics.median(r["schur s"] / r["direct s"] for r in rows)
    si = statistics.median(r["schur it"] / r["direct it"] for r in rows)
    print(f"# median over the {len(rows)} entries: even-odd / direct iterations {it:.3f}, time {tr:.3f}; "
          f"one Schur solve / direct: iterations {si:.3f}, time {st:.3f}")
    return rows


if __name__ == "__main__":
    main()
