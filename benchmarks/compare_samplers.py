"""HMC, FTHMC and flow independence Metropolis side by side on 2D U(1) (arXiv:2112.01586, Sec. 4).

For each lattice shape, the three samplers run from the same equilibrium start (exact configurations
from ``u1_exact``, so every chain starts in a typical topological sector and <Q^2> is not biased by
a frozen start), each with its step size tuned during thermalization toward a target acceptance and
then fixed. A table gives, with Gamma-method errors: acceptance, <exp(-delta_H)>, <cos x_P> and
<Q^2> next to the exact values, tau_int(Q), seconds per trajectory (per chain, chains batched) and
seconds per independent Q sample, ``2 tau_int(Q) x seconds per trajectory``, and the flow's
one-time training cost. Figures (PNG, with matplotlib) from the same runs: histories of <cos x_P>
and Q for HMC and FTHMC (the seed's Figures 4a, 4b) and loss and ESS against training step (Fig. 5).

    # the flow trained on 8x8 at beta = 6 (benchmarks/train_flows.py ess ... --save b6.pt), then
    python benchmarks/compare_samplers.py b6.pt --shapes 8 16 --chains 16 --trajectories 500 --hmc-trajectories 20000
    # the spec files of the samplers are printed and written to the output folder

Times are wall-clock on this machine (shared and noisy): read ratios, and rerun before quoting.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from lattice_flows import Simulation
from lattice_flows.checkpoint import load_checkpoint

SAMPLERS = ("hmc", "fthmc", "flow_imh")


def sampler_section(name: str, args) -> dict:
    if name == "hmc":
        steps, length = args.hmc_steps, args.hmc_length
    elif name == "fthmc":
        steps, length = args.fthmc_steps, args.fthmc_length
    else:
        return {"name": "flow_imh"}
    integrator = {"name": args.integrator, "step_size": length / steps, "n_steps": steps}
    section = {"name": name, "integrator": integrator, "target_acceptance": args.target_acceptance}
    if name == "fthmc" and args.fthmc_inner > 1:  # two time scales: see FTHMC.fast_force
        integrator.update(name="nested_leapfrog", n_inner=args.fthmc_inner)
        section["fast_force"] = args.fthmc_fast
    return section


def run_settings(args, seed: int, sampler: str = "") -> dict:
    hmc = sampler == "hmc"
    return {
        "n_chains": args.chains,
        "n_thermalization": args.hmc_thermalization if hmc else args.thermalization,
        "n_trajectories": args.hmc_trajectories if hmc else args.trajectories,
        "seed": seed,
        "dtype": args.dtype,
        "device": args.device,
    }


def equilibrium_start(beta: float, shape: list[int], args) -> torch.Tensor:
    """``n_chains`` independent exact configurations, ``(n_chains, 2, L_0, L_1)``."""
    spec = {
        "lattice": {"shape": shape},
        "action": {"name": "u1_wilson", "beta": beta},
        "sampler": {"name": "u1_exact"},
        "observables": [],
        **run_settings(args, seed=args.seed + 7),
    }
    sim = Simulation.from_spec(spec)
    g = sim.generator()
    state = sim.sampler.init(sim.initial_fields(g), sim.action)
    state, _ = sim.sampler.step(state, sim.action, g)
    return state.x


def build(name: str, checkpoint: str, shape: list[int], args) -> Simulation:
    overrides = {
        "lattice": {"shape": shape},
        "sampler": sampler_section(name, args),
        "observables": ["plaquette", "topological_charge"],
        **run_settings(args, seed=args.seed, sampler=name),
    }
    if name == "hmc":  # the checkpoint's theory without its flow: no weights to read
        saved = {k: v for k, v in load_checkpoint(checkpoint)["spec"].items() if k not in ("flow", "training")}
        return Simulation.from_spec({**saved, **overrides})
    return Simulation.load(checkpoint, **overrides)


def retrain(checkpoint: str, shape: list[int], minutes: float, out: Path, args) -> tuple[str, float]:
    """Retrain the flow on ``shape`` for ``minutes``; returns the new checkpoint and the seconds spent."""
    sim = Simulation.load(checkpoint, lattice={"shape": shape})
    before = float(sim.history["seconds"].iloc[-1]) if sim.history is not None and len(sim.history) else 0.0
    training = {**sim.to_spec()["training"], "max_seconds": before + 60 * minutes, "n_steps": 10**9}
    sim = Simulation.load(checkpoint, lattice={"shape": shape}, training=training)
    sim.train(progress=False)
    path = out / f"flow_{shape[0]}x{shape[1]}.pt"
    sim.save(path)
    return str(path), float(sim.history["seconds"].iloc[-1]) - before


def measure(sim: Simulation, start: torch.Tensor) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    t0 = time.perf_counter()
    table = sim.run(initial=start)
    seconds = time.perf_counter() - t0
    return table, sim.summary(table), seconds


def row(name: str, sim: Simulation, table: pd.DataFrame, summary: pd.DataFrame, seconds: float, training_s: float) -> dict:
    s = sim.settings
    per_traj = seconds / ((s.n_thermalization + s.n_trajectories) * s.n_chains)
    q = "topological_charge"
    tau, dtau = summary.loc[q, "tau_int"], summary.loc[q, "tau_int_error"]
    if not table["accepted"].any():  # nothing moved: no autocorrelation time to measure
        tau, dtau = float("inf"), float("nan")
    out = {
        "sampler": name,
        "acc": summary.loc["accepted", "mean"],
        "exp(-dH)": summary.loc["exp(-delta_H)", "mean"],
        "exp(-dH) err": summary.loc["exp(-delta_H)", "error"],
        "cos P": summary.loc["plaquette", "mean"],
        "cos P err": summary.loc["plaquette", "error"],
        "cos P exact": summary.loc["plaquette", "exact"],
        "Q^2": summary.loc[f"{q}^2", "mean"],
        "Q^2 err": summary.loc[f"{q}^2", "error"],
        "Q^2 exact": summary.loc[f"{q}^2", "exact"],
        "tau_Q": tau,
        "tau_Q err": dtau,
        "tau reliable": bool(summary.loc[q, "reliable"]),
        "tau note": str(summary.loc[q, "note"]),
        "s/traj": per_traj,
        "s/indep Q": 2 * tau * per_traj,
        "training s": training_s,
        "sampler spec": json.dumps(table.attrs.get("sampler", {})),
        # <exp(-dH)> = 1 holds in expectation; when some trajectories blow up (dH >> 1), their
        # time-reversed partners (dH << -1) are exponentially rare and the sample mean falls short of 1
        "P(dH>10)": float((table["delta_H"] > 10).mean()),
        "P(dH<-10)": float((table["delta_H"] < -10).mean()),
    }
    return out


def print_table(rows: list[dict], shape) -> None:
    print(f"\n# beta = {rows[0]['beta']}, {shape[0]}x{shape[1]}")
    head = (f"{'sampler':>9} {'acc':>5} {'<exp(-dH)>':>14} {'<cos x_P>':>19} {'exact':>7} {'<Q^2>':>15} "
            f"{'exact':>6} {'tau_int(Q)':>13} {'s/traj':>9} {'s/indep Q':>10} {'training s':>10}")
    print(head)
    for r in rows:
        flag = "" if r["tau reliable"] else "*"
        print(
            f"{r['sampler']:>9} {r['acc']:>5.3f} {r['exp(-dH)']:>7.3f}±{r['exp(-dH) err']:<6.3f} "
            f"{r['cos P']:>10.5f}±{r['cos P err']:<8.5f} {r['cos P exact']:>7.5f} {r['Q^2']:>7.3f}±{r['Q^2 err']:<7.3f} "
            f"{r['Q^2 exact']:>6.3f} {r['tau_Q']:>6.1f}±{r['tau_Q err']:<5.1f}{flag:1} {r['s/traj']:>9.2e} "
            f"{r['s/indep Q']:>10.2e} {r['training s']:>10.0f}"
        )
    for r in rows:
        print(f"#   {r['sampler']}: fraction of trajectories with delta_H > 10: {r['P(dH>10)']:.4f}, < -10: {r['P(dH<-10)']:.5f}")
    hmc = next((r for r in rows if r["sampler"] == "hmc"), None)
    for r in rows:
        if hmc is not None and r is not hmc:
            # a tau_int whose window did not close is a lower bound, so is the cost; HMC's likewise
            bound = "" if r["tau reliable"] else "at least "
            hmc_bound = "" if hmc["tau reliable"] else " (HMC's own tau_int a lower bound)"
            print(f"#   {r['sampler']}: cost per independent Q / HMC's = {bound}{r['s/indep Q'] / hmc['s/indep Q']:.3f}"
                  f" (with training: {(r['s/indep Q'] * 1000 + r['training s']) / (hmc['s/indep Q'] * 1000):.3f} "
                  f"for 1000 samples){hmc_bound}")
    for r in rows:
        if not r["tau reliable"]:  # the footnote of each "*", with the summary's own reason
            print(f"#   * {r['sampler']}: tau_int(Q) unreliable: {r['tau note']}")


def figures(out: Path, tables: dict, history: pd.DataFrame | None) -> list[Path]:
    """The seed's Figures 4a/4b (histories) and 5 (training); PNG files, or none without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib is not installed (pip install -e '.[plots]'): no figures")
        return []
    paths = []
    for shape, by_sampler in tables.items():
        names = [n for n in ("hmc", "fthmc") if n in by_sampler]
        if not names:
            continue
        # one column per sampler: their runs differ in length by orders of magnitude
        fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 5), sharey="row", squeeze=False)
        for col, name in enumerate(names):
            chain0 = by_sampler[name][by_sampler[name]["chain"] == 0]
            axes[0, col].plot(chain0["trajectory"], chain0["plaquette"], lw=0.5, color=f"C{col}")
            axes[1, col].plot(chain0["trajectory"], chain0["topological_charge"], lw=0.8, color=f"C{col}")
            axes[0, col].set_title(f"{name.upper()}, {shape}, chain 0")
            axes[1, col].set_xlabel("trajectory")
        axes[0, 0].set_ylabel(r"$\langle \cos x_P \rangle$")
        axes[1, 0].set_ylabel("$Q$")
        fig.tight_layout()
        path = out / f"histories_{shape}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    if history is not None and len(history):
        fig, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
        window = max(1, len(history) // 200)
        axes[0].plot(history["step"], history["loss"].rolling(window).mean(), lw=0.8)
        axes[1].plot(history["step"], history["ess"].rolling(window).mean(), lw=0.8)
        axes[0].set_ylabel(r"loss $\langle \log q + S \rangle$")
        axes[1].set_ylabel(f"ESS (batch, mean of {window})")
        axes[1].set_xlabel("training step")
        fig.tight_layout()
        path = out / "training.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a flow checkpoint (Simulation.save), trained at the beta to compare at")
    p.add_argument("--shapes", type=int, nargs="+", default=[8, 16], help="square lattice sizes L")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--thermalization", type=int, default=100, help="tuning trajectories per chain (not measured)")
    p.add_argument("--trajectories", type=int, default=500, help="measured trajectories per chain (flow samplers)")
    p.add_argument("--hmc-trajectories", type=int, default=20000, help="measured trajectories per chain of HMC")
    p.add_argument("--hmc-thermalization", type=int, default=200, help="tuning trajectories per chain of HMC")
    p.add_argument("--integrator", default="leapfrog")
    p.add_argument("--hmc-steps", type=int, default=10)
    p.add_argument("--hmc-length", type=float, default=1.0, help="trajectory length of HMC")
    p.add_argument("--fthmc-steps", type=int, default=10)
    p.add_argument("--fthmc-length", type=float, default=1.0, help="trajectory length of FTHMC")
    p.add_argument("--fthmc-inner", type=int, default=1, help="inner steps of FTHMC's fast force (nested leapfrog)")
    p.add_argument("--fthmc-fast", default="action", choices=("all", "action", "flow"),
                   help="which part of FTHMC's latent force takes the inner steps")
    p.add_argument("--target-acceptance", type=float, default=0.8)
    p.add_argument("--retrain-minutes", type=float, default=0.0, help="retrain the flow on each larger lattice first")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="runs/compare_samplers", help="folder for figures, tables (csv.gz) and specs")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    base = Simulation.load(args.checkpoint)
    beta = base.to_spec()["action"]["beta"]
    history = base.history
    training_s = float(history["seconds"].iloc[-1]) if history is not None and len(history) else 0.0
    trained_shape = list(base.lattice_shape)
    print(f"# {args.checkpoint}: flow {json.dumps(base.to_spec()['flow'])}")
    steps = len(history) if history is not None else 0
    print(f"# trained on {trained_shape} at beta = {beta}: {steps} steps, {training_s:.0f} s")

    tables: dict = {}
    all_rows = []
    for L in args.shapes:
        shape = [L, L]
        checkpoint, extra = args.checkpoint, 0.0
        if shape != trained_shape and args.retrain_minutes > 0:
            checkpoint, extra = retrain(args.checkpoint, shape, args.retrain_minutes, out, args)
        start = equilibrium_start(beta, shape, args)
        label = f"{L}x{L}"
        rows = []
        for name in args.samplers:
            sim = build(name, checkpoint, shape, args)
            if name != "hmc":
                quality = sim.flow_quality(1024, torch.Generator(device=sim.device).manual_seed(1))
                print(f"# {label} {name}: flow ESS {quality['ess']:.4f}, loss {quality['loss']:.2f}", flush=True)
            table, summary, seconds = measure(sim, start)
            tables.setdefault(label, {})[name] = table
            table.to_csv(out / f"table_{name}_{label}.csv.gz", index=False)
            r = row(name, sim, table, summary, seconds, 0.0 if name == "hmc" else training_s + extra)
            r["beta"], r["shape"] = beta, label
            rows.append(r)
            spec = sim.to_spec()
            spec["sampler"] = table.attrs.get("sampler", spec["sampler"])
            (out / f"spec_{name}_{label}.json").write_text(json.dumps(spec, indent=2))
            print(f"# {label} {name}: {seconds:.0f} s, tuned sampler {r['sampler spec']}", flush=True)
        print_table(rows, shape)
        all_rows.extend(rows)
    frame = pd.DataFrame(all_rows)
    frame.to_csv(out / "comparison.csv", index=False)
    for path in figures(out, tables, history):
        print(f"# figure: {path}")
    print(f"# table: {out / 'comparison.csv'}")


if __name__ == "__main__":
    main()
