"""The parts under :class:`Simulation`, each on its own: the chain driver as a plain function with a toy sampler,
the flow trainer without a simulation, the run table, the one exact-value lookup, and what an evolved copy
of a simulation shares."""

from __future__ import annotations

import copy

import attrs
import pandas as pd
import pytest
import torch

from lattice_flows import ChainState, Sampler, Simulation
from lattice_flows.analysis import EXP_DELTA_H, IDENTITY_ROW
from lattice_flows.chain_driver import drive_chains
from lattice_flows.checkpoint import load_checkpoint
from lattice_flows.flow_trainer import FlowTrainer
from lattice_flows.run_summary import exact_values
from lattice_flows.run_table import RESERVED_COLUMNS, records_table
from lattice_flows.training import TrainingSettings


@attrs.frozen(kw_only=True)
class NoisySampler(Sampler):
    """Adds ``scale`` times a normal draw to every field; ``adapt`` halves the scale and notes the iteration."""

    scale: float = 1.0
    adapted: tuple = ()

    def step(self, state, action, generator):
        noise = torch.randn(state.x.shape, generator=generator, dtype=state.x.dtype, device=state.x.device)
        n = state.x.shape[0]
        info = {
            "accepted": torch.ones(n, dtype=torch.bool, device=state.x.device),
            "delta_H": torch.zeros(n, dtype=state.x.dtype, device=state.x.device),
            "scale": torch.full((n,), self.scale, dtype=state.x.dtype, device=state.x.device),
        }
        return ChainState(x=state.x + self.scale * noise), info

    def adapt(self, info, iteration):
        return attrs.evolve(self, scale=self.scale / 2, adapted=self.adapted + (iteration,))


def _drive(device, dtype, **kwargs):
    generator = torch.Generator(device=device).manual_seed(7)
    state = ChainState(x=torch.zeros((3, 2), dtype=dtype, device=device))
    kwargs = {"n_thermalization": 3, "n_trajectories": 4, "measure": lambda x: {"sum": x.sum(1)}, **kwargs}
    return drive_chains(NoisySampler(), None, state, generator, **kwargs), generator


def test_the_driver_adapts_only_while_thermalizing_then_records_every_update(device, dtype):
    updates, tuned = [], []
    run, _ = _drive(device, dtype, on_update=lambda done, info: updates.append(done), on_thermalized=tuned.append)
    assert updates == list(range(1, 8)) and (run.done, run.total, run.stopped) == (7, 7, False)
    assert run.sampler.adapted == (0, 1, 2) and [s.adapted for s in tuned] == [(0, 1, 2)]
    assert list(run.records) == ["accepted", "delta_H", "scale", "sum"]
    assert all(len(values) == 4 for values in run.records.values())
    assert all(bool((v == 1 / 8).all()) for v in run.records["scale"])  # measured with the tuned sampler
    assert torch.equal(run.records["sum"][-1], run.state.x.sum(1))


def test_the_driver_checkpoints_every_k_updates_when_stopping_and_at_the_end(device, dtype):
    saves = []
    on_checkpoint = lambda sampler, state, done, records: saves.append((done, len(records.get("sum", []))))  # noqa: E731
    run, _ = _drive(device, dtype, on_checkpoint=on_checkpoint, checkpoint_every=2)
    assert saves == [(2, 0), (4, 1), (6, 3), (7, 4)]
    saves.clear()
    updates = []
    run, _ = _drive(device, dtype, on_checkpoint=on_checkpoint, checkpoint_every=2, on_update=lambda done, info: updates.append(done),
                    should_stop=lambda: updates[-1] == 5)
    assert run.stopped and run.done == 5 and updates == [1, 2, 3, 4, 5] and saves == [(2, 0), (4, 1), (5, 2)]
    with pytest.raises(ValueError, match=r"checkpoint_every=\.\.\.\): expected an integer >= 1 or None, got 0"):
        _drive(device, dtype, checkpoint_every=0)


def test_a_stopped_drive_continued_gives_the_uninterrupted_chains(device, dtype):
    whole, _ = _drive(device, dtype)
    asked = []
    part, generator = _drive(device, dtype, should_stop=lambda: asked.append(1) or len(asked) == 2)
    assert part.stopped and part.done == 2  # still thermalizing: the sampler as tuned so far goes on
    rest = drive_chains(
        part.sampler, None, part.state, generator, n_thermalization=3, n_trajectories=4,
        measure=lambda x: {"sum": x.sum(1)}, done=part.done, records=part.records,
    )
    assert rest.sampler == whole.sampler and torch.equal(rest.state.x, whole.state.x)
    for key in whole.records:
        assert all(torch.equal(a, b) for a, b in zip(rest.records[key], whole.records[key], strict=True))


def test_the_run_table_is_chain_major_with_the_reserved_columns_first():
    records = {"accepted": [torch.tensor([True, False]), torch.tensor([False, True])],
               "delta_H": [torch.tensor([0.1, 0.2], dtype=torch.float64), torch.tensor([0.3, 0.4], dtype=torch.float64)]}
    table = records_table(records, range(4, 6), 2)
    assert list(table.columns) == ["chain", "trajectory", "accepted", "delta_H"] == list(RESERVED_COLUMNS)
    assert list(table["chain"]) == [4, 4, 5, 5] and list(table["trajectory"]) == [0, 1, 0, 1]
    assert list(table["delta_H"]) == [0.1, 0.3, 0.2, 0.4] and list(table["accepted"]) == [True, False, False, True]


def test_the_exact_value_lookup_covers_moments_and_the_exact_samplers_identities():
    class Charge:  # an observable knowing <Q> = 0 and <Q^2> = 1.5
        def exact(self):
            return {1: 0.0, 2: 1.5}

    rows = ["Q", "Q^2", EXP_DELTA_H, IDENTITY_ROW, "accepted"]
    assert exact_values({"Q": Charge()}, rows) == {"Q": 0.0, "Q^2": 1.5, EXP_DELTA_H: 1.0, IDENTITY_ROW: 1.0}


SIGMA = 2.0


def gaussian_spec(**training):
    return {
        "lattice": {"shape": [3, 2]},
        "action": {"name": "gaussian", "sigma": SIGMA},
        "flow": {"name": "affine"},
        "training": {"n_steps": 8, "batch_size": 16, "lr": 0.05, **training},
        "sampler": {"name": "hmc", "integrator": {"name": "leapfrog", "step_size": 0.3, "n_steps": 3}},
        "observables": [],
        "seed": 4,
    }


def _losses(history: pd.DataFrame) -> list[float]:
    return list(history["loss"])


def test_the_trainer_trains_in_two_calls_as_in_one_and_its_checkpoint_continues_it(toy_plugins, tmp_path):
    """A :class:`FlowTrainer` on its own, no simulation: 8 steps at once, 4 + 4, and 4 + save + restore + 4 agree
    bit for bit (the optimizer state and the training stream carry over), on the CPU."""
    sims = [Simulation.from_spec(gaussian_spec()) for _ in range(3)]
    settings = sims[0].training
    first = attrs.evolve(settings, n_steps=4)
    trainers = [FlowTrainer(s.flow, seed=4, device=s.device) for s in sims]
    kw = {"dtype": sims[0].dtype}
    once = trainers[0].train(sims[0].action, (3, 2), settings, history=None, **kw)
    half = trainers[1].train(sims[1].action, (3, 2), first, history=None, **kw)
    twice = trainers[1].train(sims[1].action, (3, 2), settings, history=half, **kw)
    assert len(once) == 8 and _losses(twice) == _losses(once)

    half = trainers[2].train(sims[2].action, (3, 2), first, history=None, **kw)
    trainers[2].save(tmp_path / "flow.pt", spec=sims[2].to_spec(), history=half, lattice_shape=(3, 2))
    fresh = Simulation.from_spec(gaussian_spec())
    restored = FlowTrainer(fresh.flow, seed=4, device=fresh.device)
    history = restored.restore(load_checkpoint(tmp_path / "flow.pt"), tmp_path / "flow.pt",
                               flow_spec=fresh.to_spec()["flow"], lr=settings.lr)
    assert history.attrs["lattice_shape"] == [3, 2] and _losses(history) == _losses(half)
    resumed = restored.train(fresh.action, (3, 2), settings, history=history, **kw)
    assert len(resumed) == 8
    if fresh.device.type == "cpu":  # the training stream is restored on the CPU only
        assert _losses(resumed) == _losses(once)
        assert torch.equal(fresh.flow.log_scale, sims[0].flow.log_scale)


def test_a_trainer_copy_starts_where_the_original_is_and_then_goes_its_own_way(toy_plugins):
    sim = Simulation.from_spec(gaussian_spec())
    trainer = FlowTrainer(sim.flow, seed=4, device=sim.device)
    trainer.train(sim.action, (3, 2), sim.training, history=None, dtype=sim.dtype)
    other = trainer.copy()
    assert other.flow is trainer.flow
    assert torch.equal(other.generator().get_state(), trainer.generator().get_state())
    state = copy.deepcopy(trainer.optimizer(1.0).state_dict())
    assert other.optimizer(1.0) is not trainer.optimizer(1.0)
    assert other.optimizer(1.0).state_dict()["param_groups"] == state["param_groups"]
    before = trainer.generator().get_state().clone()
    torch.randn(3, generator=other.generator(), device=sim.device)
    assert torch.equal(trainer.generator().get_state(), before)
    assert not torch.equal(other.generator().get_state(), before)


def test_an_evolved_copy_shares_the_flow_but_not_the_optimizer_state_or_the_training_stream(toy_plugins):
    """Before issue 14 ``evolve`` copied the optimizer and the training generator objects: training the copy
    moved the original's Adam moments and its random stream."""
    sim = Simulation.from_spec(gaussian_spec())
    sim.train(progress=False)
    moments = copy.deepcopy(sim.optimizer().state_dict()["state"])
    stream = sim._training_generator().get_state().clone()

    other = sim.evolve(n_chains=2)
    assert other.flow is sim.flow and other.settings.n_chains == 2
    assert other.optimizer() is not sim.optimizer() and other._training_generator() is not sim._training_generator()
    assert torch.equal(other._training_generator().get_state(), stream)  # it starts where the original is
    other.training = attrs.evolve(other.training, n_steps=16)
    other.train(progress=False)
    assert len(other.history) == 16 and len(sim.history) == 8

    assert torch.equal(sim._training_generator().get_state(), stream)
    after = sim.optimizer().state_dict()["state"]
    for key, values in moments.items():
        for name, value in values.items():
            assert torch.equal(after[key][name], value), (key, name)


def test_training_settings_default_when_the_spec_has_none(toy_plugins):
    spec = gaussian_spec()
    del spec["training"]
    sim = Simulation.from_spec(spec)
    assert sim.training is None
    assert sim.optimizer().param_groups[0]["lr"] == TrainingSettings().lr
