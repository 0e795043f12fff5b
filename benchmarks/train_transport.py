"""Does training pay for the transport layers of ``u1_nonequilibrium_transport``? Annealed flow transport, measured.

Issue 16's next step after the untrained layers (``docs/flows.md``): train each step's map ``f_k`` (4 layers at
their von Mises start, ``transport_reach``) by the annealed-flow-transport loss ``<S_k(f_k(x)) - log|det f_k'(x)|>``
over the fields ``x`` that reach step ``k`` (the reverse KL of the pushed-forward fields to ``exp(-S_k)``, up to a
constant), then measure the protocol on fresh exact prior fields against the untrained one on the same fields:
``var W``, ``mean W`` (lower is less dissipation: ``<W> - Delta F`` is the path KL), the pair acceptance.

Two ways to train (Adam, ``--lr``):

- default (online): every iteration runs ``--train-batch`` protocols from fresh exact prior fields through the
  current maps; every step's map gets the gradient of its term at the fields that reach it (inputs and HMC steps
  detached); the fresh protocols' mean ``W`` is printed every ``--report`` iterations, an unbiased running test;
- ``--fixed-batch``: one batch of protocols, each step's map trained ``--iterations`` times on the fields that
  reach it (half of them; the other half held out, whose loss is printed), before the next step.

``--loss path`` (online) trains on the whole protocol instead: autograd follows the maps *and* the protocol's
HMC trajectories (:func:`differentiable_hmc`, the same leapfrog written out of place), and the loss is the fresh
protocols' mean ``W``, so a map is trained for what it does to every later step (the accept decisions are not
differentiated).

``--hidden H...`` trains ``u1_plaquette_coupling`` layers (a conditioner that sees the frozen plaquettes, ``hidden
= []``: one linear convolution, zero at the start) instead of the context-free ones.

    python benchmarks/train_transport.py --n-switch 25                 # online, context-free: ~2 CPU min
    python benchmarks/train_transport.py --n-switch 25 --hidden        # online, linear conditioner: ~7 CPU min
    python benchmarks/train_transport.py --n-switch 25 --iterations 30 --lr 3e-4 --train-batch 512 --chains 64 --fixed-batch
    python benchmarks/train_transport.py --n-switch 25 --loss path --iterations 300 --report 30 --lr 3e-4   # ~3 CPU min

16x16, prior beta 3 -> 6, HMC 0.1 x 5 per step, float64, one thread. CPU time of one process on a machine that may
be shared. The exactness of the trained protocol (the maps' Jacobian in the work) is tested in
``tests/test_benchmarks.py`` against Jarzynski's equality with the exact free energy.
"""

from __future__ import annotations

import argparse
import time

import torch

from lattice_flows import Simulation
from lattice_flows.angles import wrap
from lattice_flows_hmc.nonequilibrium import InterpolatedAction
from lattice_flows_u1.action import U1Wilson
from lattice_flows_u1.exact_sampling import sample_exact
from lattice_flows_u1.flows.coupling import PlaquetteCouplingFlow
from lattice_flows_u1.flows.von_mises_transport import VonMisesTransport
from lattice_flows_u1.geometry import plaquette_angles
from lattice_flows_u1.nonequilibrium import U1NonEquilibriumTransport


class Trained(U1NonEquilibriumTransport):
    """``u1_nonequilibrium_transport`` whose steps apply the trained maps ``_maps[(beta_from, beta_to)]``."""

    def transport(self, beta_from: float, beta_to: float):
        return self._maps[(beta_from, beta_to)]


def trainable(t) -> list:
    """The tensors a step map of :func:`build_map` trains."""
    return t._params if isinstance(t, VonMisesTransport) else list(t.parameters())


def step_loss(t, current, x):
    """``(f(x), <S_k(f(x)) - log|det f'(x)|>)`` of a step map ``t`` at fields ``x``, ``current`` = ``S_k``."""
    x1, logdet = t(x)
    return x1, (current(x1) - logdet).mean()


def hmc_step(s, x, current, action, generator):
    """One of the protocol's HMC trajectories on ``current``, normalized as the sampler does."""
    x, _ = s._trajectory(x, current, action.phase_space, generator)
    return action.normalize(x)


def make_sim(args, n_switch):
    """The 16x16 (``--shape``) run whose sampler is ``u1_nonequilibrium_transport`` with ``n_switch`` steps."""
    sampler = {"name": "u1_nonequilibrium_transport", "prior": {"name": "u1_wilson", "beta": args.prior_beta},
               "n_switch": n_switch, "prior_updates": 1, "transport_layers": args.layers, "transport_reach": args.reach,
               "n_bins": args.n_bins, "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 5}}
    return Simulation.from_spec({"dtype": "float64", "lattice": {"shape": [args.shape, args.shape]},
                                 "action": {"name": "u1_wilson", "beta": args.beta}, "sampler": sampler})


def train(args, n_switch, seed):
    """``--fixed-batch``: step by step on one batch (half trained on, half held out); ``(maps by k, CPU s)``."""
    sim = make_sim(args, n_switch)
    s, action = sim.sampler, sim.action
    prior, zero = s.prior, InterpolatedAction(s.prior, action, 0.0)
    g = torch.Generator().manual_seed(seed)
    y = sample_exact(args.prior_beta, args.train_batch, (args.shape, args.shape), generator=g, dtype=torch.float64)
    x = hmc_step(s, y, prior, action, g)
    maps, t0 = {}, time.process_time()
    for k in range(1, n_switch + 1):
        t, params = build_map(args, *s.step_betas(k, zero))
        current = InterpolatedAction(prior, action, k / n_switch)
        opt = torch.optim.Adam(params, lr=args.lr)
        x = x.detach()
        trained_half, held_out = x[: x.shape[0] // 2], x[x.shape[0] // 2:]
        with torch.no_grad():
            before = [float(step_loss(t, current, part)[1]) for part in (trained_half, held_out)]
        for _ in range(args.iterations):
            _, loss = step_loss(t, current, trained_half)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            after = [float(step_loss(t, current, part)[1]) for part in (trained_half, held_out)]
            x, _ = t(x)
        if k % 5 == 1 or k == n_switch:
            print(f"step {k}: train loss {before[0]:.4f} -> {after[0]:.4f}, held out {before[1]:.4f} -> {after[1]:.4f}")
        for p in params:
            p.requires_grad_(False)
        maps[k] = t
        x = action.normalize(x)
        if k < n_switch:
            x = hmc_step(s, x, current, action, g)
    return maps, time.process_time() - t0


def build_map(args, beta_from, beta_to):
    """Step map at its von Mises start from ``beta_from`` toward ``beta_to``, and its trainable tensors."""
    if args.hidden is None:
        t = VonMisesTransport(beta_from, beta_to, n_layers=args.layers, n_bins=args.n_bins)
        t._params = [p.double().clone().requires_grad_(True) for p in t._params]
        t._cache.clear()
    else:
        t = PlaquetteCouplingFlow(PlaquetteCouplingFlow.Config(
            n_layers=args.layers, hidden=tuple(args.hidden), kernel="spline", n_bins=args.n_bins,
            von_mises_beta=beta_to, latent_beta=beta_from), (args.shape, args.shape)).double()
    return t, trainable(t)


def _online_setup(args, n_switch):
    """``(sampler, action, maps by k, their trainable tensors, Adam)`` of the online trainers, the maps at their start."""
    sim = make_sim(args, n_switch)
    s, action = sim.sampler, sim.action
    zero = InterpolatedAction(s.prior, action, 0.0)
    maps, params = {}, []
    for k in range(1, n_switch + 1):
        maps[k], p = build_map(args, *s.step_betas(k, zero))
        params += p
    return s, action, maps, params, torch.optim.Adam(params, lr=args.lr)


def _report(args, works, work, it, t0):
    """Keep iteration ``it``'s works ``(B,)``; every ``--report`` iterations print the fresh protocols' mean and
    variance of ``W`` over the last ``--report`` iterations (an unbiased running test of the current maps)."""
    works.append(work)
    if (it + 1) % args.report == 0:
        w = torch.cat(works[-args.report:])
        print(f"  iteration {it + 1}: fresh protocols' mean W {float(w.mean()):.3f} ± {float(w.std() / w.numel() ** 0.5):.3f}, "
              f"var W {float(w.var()):.2f} ({time.process_time() - t0:.0f} CPU s)", flush=True)


def train_online(args, n_switch, seed):
    """Every iteration: fresh exact prior fields, one protocol through the current maps; each step's map gets the
    gradient of <S_k(f(x)) - log det> at the fields that reach it (the HMC steps and the inputs detached)."""
    s, action, maps, params, opt = _online_setup(args, n_switch)
    prior = s.prior
    zero = InterpolatedAction(prior, action, 0.0)
    g = torch.Generator().manual_seed(seed)
    t0, works = time.process_time(), []
    for it in range(args.iterations):
        y = sample_exact(args.prior_beta, args.train_batch, (args.shape, args.shape), generator=g, dtype=torch.float64)
        x = hmc_step(s, y, prior, action, g)
        with torch.no_grad():
            s_prev = zero(x)
        loss, work = 0.0, torch.zeros(x.shape[0], dtype=x.dtype)
        for k in range(1, n_switch + 1):
            current = InterpolatedAction(prior, action, k / n_switch)
            x1, logdet = maps[k](x.detach())
            term = current(x1) - logdet
            loss = loss + term.mean()
            work = work + term.detach() - s_prev
            x = action.normalize(x1.detach())
            if k < n_switch:
                x = hmc_step(s, x, current, action, g)
                with torch.no_grad():
                    s_prev = current(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _report(args, works, work, it, t0)
    for p in params:
        p.requires_grad_(False)
    return maps, time.process_time() - t0


def _wilson(beta, x):
    """``S`` ``(B,)`` of ``u1_wilson`` at ``beta`` (its ``__call__`` is out of place: autograd follows it)."""
    return U1Wilson(beta=beta)(x)


def _wilson_force(beta, x):
    """``dS/dx`` ``(B, 2, L_0, L_1)`` of :func:`_wilson`, out of place: the action's ``force`` works in place, which
    autograd cannot follow."""
    s = torch.sin(plaquette_angles(x))
    return beta * torch.stack((s - torch.roll(s, 1, dims=2), torch.roll(s, 1, dims=1) - s), dim=1)


def differentiable_hmc(x, beta, generator, step_size=0.1, n_steps=5):
    """One HMC trajectory (leapfrog ``step_size x n_steps``, Metropolis test) on the Wilson action at ``beta``
    that autograd follows through the leapfrog: the path gradient of the work (the accept decision itself is not
    differentiated, so the gradient is that of the accepted branch)."""
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    h0 = 0.5 * v.square().sum(dim=(1, 2, 3)) + _wilson(beta, x)
    x1, f = x, _wilson_force(beta, x)
    for _ in range(n_steps):
        v = v - 0.5 * step_size * f
        x1 = x1 + step_size * v
        f = _wilson_force(beta, x1)
        v = v - 0.5 * step_size * f
    delta_h = 0.5 * v.square().sum(dim=(1, 2, 3)) + _wilson(beta, x1) - h0
    u = torch.rand(delta_h.shape, generator=generator, dtype=x.dtype)
    accepted = u < torch.exp(-delta_h.detach())
    return wrap(torch.where(accepted.view(-1, 1, 1, 1), x1, x))


def train_path(args, n_switch, seed):
    """``--loss path``: every iteration, fresh exact prior fields and one protocol through the current maps, with
    autograd through the maps *and* the protocol's HMC steps; the loss is the protocol's mean work ``<W>`` (the
    path KL plus ``Delta F``), so a map is trained for what it does to every later step, not only to its own."""
    s, action, maps, params, opt = _online_setup(args, n_switch)
    betas = [args.prior_beta + (args.beta - args.prior_beta) * k / n_switch for k in range(n_switch + 1)]
    g = torch.Generator().manual_seed(seed)
    t0, works = time.process_time(), []
    for it in range(args.iterations):
        y = sample_exact(args.prior_beta, args.train_batch, (args.shape, args.shape), generator=g, dtype=torch.float64)
        x = hmc_step(s, y, s.prior, action, g)
        work = -_wilson(betas[0], x)
        for k in range(1, n_switch + 1):
            x1, logdet = maps[k](x)
            work = work + _wilson(betas[k], x1) - logdet
            x = wrap(x1)
            if k < n_switch:
                x = differentiable_hmc(x, betas[k], g)
                work = work - _wilson(betas[k], x)
        loss = work.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        _report(args, works, work.detach(), it, t0)
    for p in params:
        p.requires_grad_(False)
    return maps, time.process_time() - t0


def evaluate(args, n_switch, maps, seed):
    """Works ``(--chains,)`` of the untrained and the trained protocol from the same fresh exact prior fields."""
    sim = make_sim(args, n_switch)
    s = sim.sampler
    out, zero = {}, InterpolatedAction(s.prior, sim.action, 0.0)
    trained = Trained(**{a.name: getattr(s, a.name) for a in s.__attrs_attrs__})
    object.__setattr__(trained, "_maps", {s.step_betas(k, zero): m for k, m in maps.items()})
    for label, sampler in (("untrained", s), ("trained", trained)):
        g = torch.Generator().manual_seed(seed)
        y = sample_exact(args.prior_beta, args.chains, (args.shape, args.shape), generator=g, dtype=torch.float64)
        t0 = time.process_time()
        _, _, work, _ = sampler.propose(y, sim.action, g)
        out[label] = (work, (time.process_time() - t0) / args.chains)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=int, default=16)
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--prior-beta", type=float, default=3.0)
    p.add_argument("--n-switch", type=int, nargs="+", default=[50])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--n-bins", type=int, default=16)
    p.add_argument("--reach", type=float, default=1.0)
    p.add_argument("--iterations", type=int, default=200, help="Adam steps (per step of the protocol with --fixed-batch)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--train-batch", type=int, default=64, help="protocols per iteration (--fixed-batch: the one batch)")
    p.add_argument("--chains", type=int, default=256, help="fresh protocols of the final measurement")
    p.add_argument("--fixed-batch", action="store_true", help="train step by step on one batch (see the docstring)")
    p.add_argument("--loss", choices=("step", "path"), default="step",
                   help="step: each map's own term (annealed flow transport); path: the whole protocol's mean W")
    p.add_argument("--report", type=int, default=20)
    p.add_argument("--hidden", type=int, nargs="*", default=None)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.fixed_batch and args.loss == "path":
        p.error("--loss path trains online (fresh protocols every iteration); it does not combine with --fixed-batch")
    import nonequilibrium_transport as bench  # benchmarks/ is on the path when this runs as a script

    torch.set_num_threads(1)
    for n in args.n_switch:
        trainer = train if args.fixed_batch else train_path if args.loss == "path" else train_online
        maps, secs = trainer(args, n, args.seed + 100)
        print(f"n_switch {n}: trained in {secs:.1f} CPU s ({'fixed batch' if args.fixed_batch else args.loss + ' loss, online'})", flush=True)
        res = evaluate(args, n, maps, args.seed)
        for label, (w, cpu) in res.items():
            print(f"  {label:>9}: var W {float(w.var()):.3f} ± {bench.bootstrap(w, lambda v: float(v.var())):.3f}, "
                  f"mean W {float(w.mean()):.3f}, pair acc {bench.pair_acceptance(w):.3f}, {cpu:.2e} CPU s/protocol", flush=True)


if __name__ == "__main__":
    main()
