"""``lattice-flows compare`` (lattice_flows/compare.py): samplers side by side from one start, on tiny lattices."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from lattice_flows import Simulation
from lattice_flows.cli import main
from lattice_flows.compare import CompareError, Contestant, compare, load_contestant, ratio_text

U1 = {
    "lattice": {"shape": [4, 4]},
    "action": {"name": "u1_wilson", "beta": 1.0},
    "observables": ["plaquette", "topological_charge"],
    "n_chains": 4,
    "n_thermalization": 10,
    "n_trajectories": 60,
    "seed": 3,
    "dtype": "float64",
}
HMC = {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.2, "n_steps": 5}, "target_acceptance": 0.8}
FLOW = {"name": "u1_plaquette_coupling", "kernel": "ncp", "n_layers": 2, "hidden": [2], "n_mixture": 2}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_spec(path, spec) -> str:
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A flow trained for about a second on 4x4 at beta = 1, with FTHMC as its sampler."""
    sim = Simulation.from_spec({**U1, "flow": FLOW, "training": {"n_steps": 20, "batch_size": 16}, "sampler": HMC | {"name": "fthmc"}})
    sim.train(progress=False)
    path = tmp_path_factory.mktemp("flow") / "b1.pt"
    sim.save(path)
    return str(path)


def test_specs_and_a_checkpoint_from_the_exact_start(tmp_path, checkpoint, capsys):
    hmc = write_spec(tmp_path / "hmc.json", {**U1, "sampler": HMC})
    out = tmp_path / "out"
    assert main(["compare", hmc, checkpoint, "--out", str(out), "--amortize", "1000", "--no-figures"]) == 0
    text = capsys.readouterr().out
    assert "start (all samplers): exact sampler u1_exact" in text
    frame = pd.read_csv(out / "comparison.csv")
    assert list(frame["sampler"]) == ["hmc (hmc)", "fthmc (b1)"]
    assert (frame["slow"] == "topological_charge").all()  # slow_mode, not the largest tau_int
    assert frame["plaquette exact"].notna().all() and frame["topological_charge^2 exact"].notna().all()
    assert (frame["cpu s/traj"] > 0).all() and (frame["s/traj"] > 0).all()
    # the training seconds come from the checkpoint's history, spread over --amortize samples
    history = Simulation.load(checkpoint).history
    fthmc = frame.iloc[1]
    assert fthmc["training s"] == pytest.approx(float(history["seconds"].iloc[-1])) and frame.iloc[0]["training s"] == 0
    assert fthmc["cpu s/indep+training"] == pytest.approx(fthmc["cpu s/indep"] + fthmc["training s"] / 1000)
    assert fthmc["cpu s/indep"] == pytest.approx(2 * fthmc["tau_int"] * fthmc["cpu s/traj"])
    assert frame.iloc[0]["cpu s/indep ratio"] == 1
    assert fthmc["cpu s/indep ratio"] == pytest.approx(fthmc["cpu s/indep"] / frame.iloc[0]["cpu s/indep"])
    assert "CPU cost per independent topological_charge / hmc (hmc)'s" in text
    for key in ("0_hmc", "1_fthmc"):
        assert (out / f"{key}_table.csv.gz").exists() and (out / f"{key}_summary.csv").exists()
    assert json.loads((out / "1_fthmc_spec.json").read_text())["sampler"]["name"] == "fthmc"


def test_the_table_agrees_with_simulation_summary_of_the_same_tables(tmp_path):
    sims = [Simulation.from_spec({**U1, "sampler": HMC}), Simulation.from_spec({**U1, "sampler": {"name": "u1_exact"}})]
    contestants = [Contestant(label=n, source=n, simulation=s) for n, s in zip(("hmc", "exact"), sims)]
    result = compare(contestants, out=tmp_path / "out", figures=False, echo=None)
    for (_, row), sim, label in zip(result.frame.iterrows(), sims, ("hmc", "exact")):
        table = result.runs[label].table
        pd.testing.assert_frame_equal(table.reset_index(drop=True),
                                      pd.read_csv(tmp_path / "out" / f"{list(result.runs).index(label)}_{label}_table.csv.gz"),
                                      check_dtype=False)
        summary = sim.summary(table)
        assert row["acceptance"] == summary.loc["accepted", "mean"]
        assert row["exp(-dH)"] == summary.loc["exp(-delta_H)", "mean"]
        for obs in ("plaquette", "topological_charge^2"):
            assert (row[obs], row[f"{obs} err"], row[f"{obs} exact"]) == tuple(summary.loc[obs, ["mean", "error", "exact"]])
        assert row["tau_int"] == summary.loc["topological_charge", "tau_int"]
        assert row["bound"] == (not summary.loc["topological_charge", "reliable"])
        # the lower-bound footnote, with the summary's own reason, only for a tau_int the summary does not trust
        assert (f"{label}: tau_int(topological_charge) is a LOWER BOUND" in result.text) == row["bound"]
    # the exact sampler draws independent configurations: tau_int about 1/2, and the exact values within 4 sigma
    exact = result.frame.iloc[1]
    assert exact["tau_int"] < 1.5 and abs(exact["plaquette pull"]) < 4 and abs(exact["topological_charge^2 pull"]) < 4


def test_without_an_exact_sampler_the_start_is_an_hmc_equilibration_and_says_so(tmp_path, capsys):
    phi4 = {**U1, "action": {"name": "phi4", "kappa": 0.2, "lam": 0.0}, "observables": ["magnetization", "phi_squared"],
            "sampler": HMC}
    spec = write_spec(tmp_path / "phi4.json", phi4)
    out = tmp_path / "out"
    assert main(["compare", spec, "--equilibrate", "7", "--out", str(out), "--no-figures", "--trajectories", "30"]) == 0
    text = capsys.readouterr().out
    assert "start (all samplers): 7 trajectories of hmc (phi4) from its hot start (step tuned), no exact sampler for this action" in text
    frame = pd.read_csv(out / "comparison.csv")
    # no slow_mode observable: the one with the largest tau_int
    summary = pd.read_csv(out / "0_hmc_summary.csv", index_col=0)
    assert frame["slow"].iloc[0] == summary.loc[["magnetization", "phi_squared"], "tau_int"].idxmax()
    assert frame["phi_squared exact"].notna().all()  # the free field's exact <phi^2>


def test_an_unclosed_window_and_a_frozen_observable_are_lower_bounds(tmp_path, capsys):
    # 3 measured updates: no window closes (chains far shorter than 10 tau_int); the second HMC's step is so
    # large (beta = 1, step 4, untuned) that it accepts nothing, so Q never changes
    hmc = write_spec(tmp_path / "hmc.json", {**U1, "sampler": HMC})
    stuck = {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 4.0, "n_steps": 2}}
    frozen = write_spec(tmp_path / "stuck.json", {**U1, "action": {"name": "u1_wilson", "beta": 1.0}, "sampler": stuck})
    out = tmp_path / "out"
    assert main(["compare", hmc, frozen, "--trajectories", "3", "--out", str(out), "--no-figures", "--quiet"]) == 0
    text = capsys.readouterr().out
    frame = pd.read_csv(out / "comparison.csv")
    assert frame["bound"].all() and (frame["note"].str.len() > 0).all()
    assert "hmc (hmc): tau_int(topological_charge) is a LOWER BOUND (" in text
    assert "both tau_int lower bounds: no conclusion" in text
    assert ">=" in text.splitlines()[3]  # the table's first row: tau_int and the costs shown as bounds
    stuck_row = frame.iloc[1]
    assert stuck_row["acceptance"] == 0 and stuck_row["tau_int"] == 3
    assert "topological_charge never changed in any chain in 3 trajectories" in stuck_row["note"]
    assert "never changed in any chain" in text


def test_ratio_wording_follows_which_tau_is_a_bound():
    assert ratio_text(2.0, False, False) == ("=", "2")
    assert ratio_text(2.0, True, False)[0] == ">=" and "its tau_int a lower bound" in ratio_text(2.0, True, False)[1]
    assert ratio_text(0.5, False, True)[0] == "<=" and "reference dearer" in ratio_text(0.5, False, True)[1]
    assert ratio_text(1.0, True, True)[0] == "?"


def test_mismatched_targets_are_refused_before_anything_is_written(tmp_path, capsys):
    hmc = write_spec(tmp_path / "hmc.json", {**U1, "sampler": HMC})
    cases = [
        ({**U1, "sampler": HMC, "action": {"name": "u1_wilson", "beta": 2.0}}, "action {'name': 'u1_wilson', 'beta': 2.0}"),
        ({**U1, "sampler": HMC, "lattice": {"shape": [6, 6]}}, "lattice {'shape': [6, 6]}"),
        ({**U1, "sampler": HMC, "dtype": "float32"}, "dtype 'float32'"),
        ({**U1, "sampler": HMC, "n_chains": 2}, "number of chains 2"),
    ]
    out = tmp_path / "out"
    for spec, words in cases:
        other = write_spec(tmp_path / "other.json", spec)
        assert main(["compare", hmc, other, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert words in err and "every sampler must sample the same action on the same lattice" in err
        assert not out.exists()
    assert main(["compare", hmc, str(tmp_path / "missing.toml"), "--out", str(out)]) == 2
    assert "missing.toml: no such file" in capsys.readouterr().err
    (out / "x").mkdir(parents=True)
    assert main(["compare", hmc, "--out", str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["compare", hmc, "--equilibrate", "-1"])
    assert "--equilibrate: expected a number of updates, an integer >= 0, got -1" in capsys.readouterr().err


def test_figures_side_by_side_and_training(tmp_path, checkpoint, capsys):
    pytest.importorskip("matplotlib")
    hmc = write_spec(tmp_path / "hmc.json", {**U1, "sampler": HMC, "n_trajectories": 20})
    out = tmp_path / "out"
    assert main(["compare", hmc, checkpoint, "--trajectories", "20", "--out", str(out), "--quiet"]) == 0
    assert (out / "histories.png").exists() and (out / "figures_1_fthmc" / "training.png").exists()
    assert not (out / "figures_0_hmc" / "training.png").exists()


def test_load_contestant_reads_a_run_folder(tmp_path, checkpoint):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "flow.pt").write_bytes(open(checkpoint, "rb").read())
    c = load_contestant(folder, settings={"n_chains": 2})
    assert c.label == "fthmc (run)" and c.simulation.settings.n_chains == 2 and c.simulation.history is not None
    assert math.isfinite(float(c.simulation.history["seconds"].iloc[-1]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="a folder without flow.pt or spec.json"):
        load_contestant(tmp_path / "empty")
