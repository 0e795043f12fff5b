"""The XY package's own tests: the action, the observables, the exact values and the flow, and HMC
against the exact values. The contract kit's checks are in ``test_xy_contracts.py``.

The classes are imported directly; the tests that name ``xy`` in a spec use the ``xy_registered``
fixture of conftest.py (a no-op when the package is installed).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lattice_flows
from lattice_flows import Action, Simulation
from lattice_flows_xy import exact as _exact_module
from lattice_flows_xy import observables as xy_observables
from lattice_flows_xy.action import XY
from lattice_flows_xy.flow import MobiusCouplingFlow
from lattice_flows_xy.observables import HelicityModulus, MagnetizationSquared, VortexDensity, XYEnergy

OBSERVABLE_CLASSES = {
    "xy_energy": XYEnergy,
    "helicity_modulus": HelicityModulus,
    "vortex_density": VortexDensity,
    "xy_magnetization_squared": MagnetizationSquared,
}


def _exact():
    return _exact_module


# -- the action ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (2, 3, 4)])
def test_force_matches_autograd_and_action_is_symmetric(shape):
    action = XY(beta=0.7)
    g = torch.Generator().manual_seed(1)
    theta = action.sample_prior(3, shape, generator=g, dtype=torch.float64, device="cpu") * 3  # also unwrapped
    torch.testing.assert_close(action.force(theta), Action.force(action, theta), rtol=0, atol=1e-12)
    s = action(theta)
    for _ in range(3):
        torch.testing.assert_close(action(action.random_symmetry(theta, g)), s, rtol=0, atol=1e-11)
    torch.testing.assert_close(action(action.normalize(theta)), s, rtol=0, atol=1e-11)
    assert float(action.normalize(theta).min()) >= -math.pi and float(action.normalize(theta).max()) < math.pi
    # S = -beta D V on an ordered field
    cold = action.cold_start(1, shape, dtype=torch.float64, device="cpu")
    assert float(action(cold)) == pytest.approx(-0.7 * len(shape) * math.prod(shape))


# -- the observables ----------------------------------------------------------------------------


def test_vortex_pair_has_windings_plus_and_minus_one():
    L = 10
    n0, n1 = torch.meshgrid(torch.arange(L, dtype=torch.float64), torch.arange(L, dtype=torch.float64), indexing="ij")
    # a vortex at (3.5, 3.5) and an antivortex at (6.5, 5.5), centres of plaquettes
    theta = torch.atan2(n1 - 3.5, n0 - 3.5) - torch.atan2(n1 - 5.5, n0 - 6.5)
    w = xy_observables.plaquette_winding(theta[None])[0]
    assert w[3, 3] == 1 and w[6, 5] == -1
    assert int(w.abs().sum()) == 2
    density = VortexDensity()
    assert float(density(theta[None])) == pytest.approx(2 / L**2)


def test_vortex_density_is_one_third_for_independent_angles():
    # beta = 0: the windings of a plaquette are those of a sum of three independent uniform angles,
    # w1 + w2 + w3 in [-3 pi, 3 pi), leaving [-pi, pi) with probability 2 * P(U1 + U2 + U3 > 2) = 1/3.
    action = XY(beta=1.0)
    theta = action.sample_prior(4000, (4, 4), generator=torch.Generator().manual_seed(5), dtype=torch.float64, device="cpu")
    w = xy_observables.plaquette_winding(theta)
    assert set(w.unique().tolist()) == {-1, 0, 1}
    assert bool((w.flatten(1).sum(1) == 0).all())  # windings sum to zero on the torus
    density = VortexDensity()(theta)
    mean, error = float(density.mean()), float(density.std() / math.sqrt(len(density)))
    assert abs(mean - 1 / 3) < 4 * error


# -- the exact values ---------------------------------------------------------------------------


def quadrature(beta: float, shape: tuple[int, int], n: int) -> dict[str, float]:
    """Expectations by direct numerical integration: the trapezoidal rule with ``n`` points per angle
    (exponentially accurate for these periodic analytic integrands), one angle fixed by the rotation
    symmetry. Helicity moduli along both directions."""
    L0, L1 = shape
    volume = L0 * L1
    grid = 2 * np.pi * np.arange(n) / n
    mesh = np.meshgrid(*([grid] * (volume - 1)), indexing="ij")
    theta = np.stack([np.zeros(mesh[0].size)] + [m.ravel() for m in mesh], axis=1).reshape(-1, L0, L1)
    d0 = theta - np.roll(theta, -1, axis=1)
    d1 = theta - np.roll(theta, -1, axis=2)
    cos0, cos1 = np.cos(d0).sum((1, 2)), np.cos(d1).sum((1, 2))
    log_weight = beta * (cos0 + cos1)
    weight = np.exp(log_weight - log_weight.max())
    weight /= weight.sum()

    def mean(values):
        return float(np.dot(weight, values))

    return {
        "energy": mean((cos0 + cos1) / (2 * volume)),
        "helicity_0": mean((cos0 - beta * np.sin(d0).sum((1, 2)) ** 2) / volume),
        "helicity_1": mean((cos1 - beta * np.sin(d1).sum((1, 2)) ** 2) / volume),
        "magnetization_squared": mean((np.cos(theta).sum((1, 2)) ** 2 + np.sin(theta).sum((1, 2)) ** 2) / volume**2),
    }


def test_bessel_ratios_match_scipy():
    special = pytest.importorskip("scipy.special")
    for beta in (0.01, 0.8, 3.0):
        k = np.arange(12)
        t, dt = _exact().bessel_ratios(beta, 11)
        ratios = special.iv(k, beta) / special.iv(0, beta)
        derivative = (special.iv(k - 1, beta) + special.iv(k + 1, beta)) / (2 * special.iv(0, beta)) - ratios * ratios[1]
        np.testing.assert_allclose(t, ratios, rtol=1e-13, atol=0)
        np.testing.assert_allclose(dt, derivative, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("beta,shape,n", [(1.0, (2, 2), 40), (0.5, (2, 3), 14)])
def test_transfer_matrix_matches_direct_integration(beta, shape, n):
    exact = _exact()
    direct = quadrature(beta, shape, n)
    transposed = shape[::-1]
    for lattice, helicity in ((shape, direct["helicity_0"]), (transposed, direct["helicity_1"])):
        values = exact.solve(beta, lattice, tolerance=1e-9)
        assert values.energy == pytest.approx(direct["energy"], abs=1e-10)
        assert values.helicity_modulus == pytest.approx(helicity, abs=1e-10)
        assert values.magnetization_squared == pytest.approx(direct["magnetization_squared"], abs=1e-10)
        assert math.fsum(values.winding_distribution.values()) == pytest.approx(1.0, abs=1e-14)
        # the default reference is within its own error estimate
        reference = exact.reference(beta, lattice)
        for name in ("energy", "helicity_modulus", "magnetization_squared"):
            assert abs(getattr(reference, name) - getattr(values, name)) <= max(reference.error, 1e-14)


def test_transfer_matrix_reproduces_the_high_temperature_series():
    # On the 4 x 4 lattice, with u = I_1/I_0 (the weight of a link carrying current +-1), the closed
    # current configurations with at most 6 links are: 2V oriented plaquettes and 2 L_1 + 2 L_0 = 16
    # oriented straight loops winding around the torus (4 links each); 4V oriented 1 x 2 rectangles and
    # 192 winding loops with one step up and one down (6 links: 2 directions x 2 orientations x 4 pairs
    # of neighbouring rows x 6 pairs of cut points x 2 ways to share the loop between the rows). Currents
    # +-2 first enter at u^8. So ln(Z / Z_0) = N_4 u^4 + N_6 u^6 + O(u^8), N_4 = 48, N_6 = 256, and
    #   E = (1/2V) d ln Z / d beta = u + (4 N_4 u^3 + 6 N_6 u^5) u' / 2V + O(u^7),  u' = 1 - u/beta - u^2;
    #   <Q^2> = (2 L_1 u^4 + 96 u^6) + O(u^8), so <Upsilon> = L_0^2 <Q^2> / (beta V) = (8 u^4 + 96 u^6) / beta;
    #   V <|M|^2> = sum_r <cos(theta_0 - theta_r)> = 1 + 4 u + 12 u^2 + O(u^3) (4 neighbours at u; the 4
    #   diagonal sites and the 2 sites at distance 2, each reached by 2 paths, at 2 u^2).
    exact = _exact()
    beta, (L0, L1) = 0.05, (4, 4)
    volume = L0 * L1
    t, dt = exact.bessel_ratios(beta, 2)
    u, du = t[1], dt[1]
    assert du == pytest.approx(1 - u / beta - u**2, rel=1e-12)
    values = exact.solve(beta, (L0, L1), tolerance=1e-12)
    n4, n6 = 2 * volume + 2 * L0 + 2 * L1, 4 * volume + 192
    series = u + (4 * n4 * u**3 + 6 * n6 * u**5) * du / (2 * volume)
    # (the remainders are 132 u^7, 722 u^8 / beta and 39 u^3 here: they scale as stated down to beta = 0.01)
    assert abs(values.energy - series) < 200 * u**7
    assert abs(values.energy - (series - 6 * n6 * u**5 * du / (2 * volume))) > 10 * u**5  # the u^5 term is resolved
    assert abs(values.helicity_modulus - (8 * u**4 + 96 * u**6) / beta) < 1000 * u**8 / beta
    assert abs(volume * values.magnetization_squared - (1 + 4 * u + 12 * u**2)) < 50 * u**3


def test_observables_report_exact_values_only_where_known():
    exact = _exact()
    action = XY(beta=0.3)
    for name in ("xy_energy", "helicity_modulus", "xy_magnetization_squared"):
        cls = OBSERVABLE_CLASSES[name]
        assert set(cls(action=action, lattice_shape=(4, 4)).exact()) == {1}
        assert cls(action=action, lattice_shape=(4, 4, 4)).exact() == {}
    assert VortexDensity().exact() == {}
    reference = exact.reference(0.3, (4, 4))
    assert XYEnergy(action=action, lattice_shape=(4, 4)).exact() == {1: reference.energy}
    assert exact.reference(0.3, (64, 64)) is None  # too large: no exact value rather than a slow one


# -- HMC against the exact values ---------------------------------------------------------------


@pytest.mark.parametrize("beta,seed", [(0.3, 11), (0.8, 12)])
def test_hmc_reproduces_the_exact_values(beta, seed, xy_registered):
    sim = Simulation.from_spec(
        {
            "lattice": {"shape": [4, 4]},
            "action": {"name": "xy", "beta": beta},
            "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.25, "n_steps": 6}},
            "n_chains": 16, "n_thermalization": 50, "n_trajectories": 400, "seed": seed,
        }
    )
    summary = sim.summary(sim.run())
    rows = ["xy_energy", "helicity_modulus", "xy_magnetization_squared", "exp(-delta_H)"]
    assert summary.loc[rows, "exact"].notna().all()
    assert (summary.loc[rows, "pull"].abs() < 4).all(), summary.loc[rows, ["mean", "error", "exact", "pull"]]
    assert summary.loc["accepted", "mean"] > 0.6


def test_flow_refuses_odd_lattices_and_round_trips(xy_registered):
    cls = MobiusCouplingFlow
    with pytest.raises(ValueError, match=r"even sizes.*\[5, 4\]"):
        cls.check_lattice((5, 4))
    spec = {
        "lattice": {"shape": [6, 4]},
        "action": {"name": "xy", "beta": 0.5},
        "flow": {"name": "xy_mobius", "n_layers": 2},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.1, "n_steps": 2}},
    }
    sim = Simulation.from_spec(spec)
    assert Simulation.from_spec(sim.to_spec()) == sim
    with pytest.raises(lattice_flows.SpecError, match=r"even sizes"):
        Simulation.from_spec({**spec, "lattice": {"shape": [5, 4]}})


def test_flow_commutes_with_rotations_and_checkerboard_translations():
    cls = MobiusCouplingFlow
    flow = cls(cls.Config(n_layers=4), (4, 6)).to(torch.float64)
    with torch.no_grad():
        flow.strength.copy_(torch.tensor([0.7, -0.4, 1.1, -0.9]))
    action = XY(beta=1.0)
    z = action.sample_prior(3, (4, 6), generator=torch.Generator().manual_seed(2), dtype=torch.float64, device="cpu")
    with torch.no_grad():
        x, logdet = flow(z)
        for moved_z, move in [
            (z + 1.234, lambda t: t + 1.234),  # a global rotation
            (torch.roll(z, (1, 1), dims=(1, 2)), lambda t: torch.roll(t, (1, 1), dims=(1, 2))),  # keeps the checkerboard
        ]:
            moved_x, moved_logdet = flow(moved_z)
            assert float(action.normalize(moved_x - move(x)).abs().max()) < 1e-12
            torch.testing.assert_close(moved_logdet, logdet, rtol=0, atol=1e-12)
        z2, logdet_inverse = flow.inverse(x)
    assert float(action.normalize(z2 - z).abs().max()) < 1e-12
    torch.testing.assert_close(logdet + logdet_inverse, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-12)
    assert float(logdet.abs().min()) > 0.1  # not the identity
