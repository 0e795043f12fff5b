"""The contract of a :class:`~lattice_flows.Sampler`, as one function: :func:`check_sampler`."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import attrs
import torch
from torch import Tensor

from ..base import Action, Flow, Observable, Sampler
from ._common import ContractError, action_lattices, build, check_meta, component_name, generator
from .actions import as_action
from .flows import identity_flow
from .observables import observable_applies

__all__ = ["check_sampler", "declares_incompatible", "needs_flow"]


def needs_flow(sampler: type) -> bool:
    """Whether the sampler class asks for a flow to be injected (a field ``injected("flow")``)."""
    return any(f.metadata.get("inject") == "flow" for f in attrs.fields(sampler))


def declares_incompatible(sampler: type, action: Action | type) -> bool:
    """Whether ``sampler`` declares that it does not sample ``action`` (:meth:`Sampler.applies_to`: by default,
    its :attr:`Sampler.theories` leave out the action's theory)."""
    applies_to = getattr(sampler, "applies_to", None)
    if applies_to is not None:
        return not applies_to(action)
    theories = getattr(sampler, "theories", None)
    return theories is not None and action.theory not in theories


def _chain_means(values: Tensor) -> tuple[float, float]:
    """Mean over chains of the per-chain means of ``values`` ``(T, B)``, and its standard error from the
    spread of the ``B`` independent chains (valid whatever the autocorrelation within a chain)."""
    per_chain = values.double().mean(dim=0)
    return float(per_chain.mean()), float(per_chain.std() / math.sqrt(per_chain.numel()))


def check_sampler(
    sampler: type,
    action: Action | type,
    *,
    params: Mapping[str, Any] | None = None,
    flow: Flow | None = None,
    lattice_shape: Sequence[int] | None = None,
    observables: Sequence[Observable | type] = (),
    exactness: bool = True,
    n_chains: int = 64,
    n_thermalization: int = 20,
    n_trajectories: int = 40,
    n_sigma: float = 5.0,
    device="cpu",
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> list[str]:
    """Check the sampler class ``sampler`` on ``action`` (an instance or a class).

    It is built from its ``example_params`` updated by ``params`` on ``lattice_shape`` (default: the flow's
    lattice, else the action's first test lattice), with the action, the lattice shape and, if it asks for one,
    ``flow`` injected (an :func:`~lattice_flows.testing.identity_flow` of the theory when none is given).

    - ``declared_incompatible``: if the sampler declares that it does not sample the action
      (:meth:`Sampler.applies_to`; by default, its ``theories`` leave out the action's theory), ``check_action``
      must refuse the action with a ``ValueError``, and nothing else is checked;
    - ``builds``: otherwise the pair must build and ``check_action`` must accept it (a pair that cannot be
      built is a failure, not a skip: declare ``theories`` if it is not meant to work);
    - ``step_contract``: three steps of three chains give fields ``(3, *field_shape)`` in ``dtype`` on ``device``,
      ``accepted`` bool ``(3,)`` and ``delta_H`` ``(3,)``;
    - ``reproducible``: the same seed gives the same fields and ``delta_H``, bit for bit;
    - ``exact`` (if ``exactness``): ``n_chains`` chains started from the prior, after ``n_thermalization``
      steps, over ``n_trajectories`` steps: ``<exp(-delta_H)> = 1`` and every exact value that ``observables``
      report (``Observable.exact()``, powers 1 and 2; those that do not apply to the action,
      :func:`~lattice_flows.testing.observable_applies`, are left out) within ``n_sigma`` standard errors, the errors from the
      spread of the chains' means. Pick an action and lattice the sampler mixes on in that many steps.

    Raises :class:`~lattice_flows.testing.ContractError`; returns the names of the checks that ran.
    """
    action = as_action(action)
    name = component_name(sampler)
    where = f"on {component_name(action)}"
    device = torch.device(device)
    if flow is not None and lattice_shape is None:
        lattice_shape = flow.lattice_shape
    shape = tuple(lattice_shape or action_lattices(action)[0])
    where += f", lattice {list(shape)}, {dtype}"

    def fail(check, message):
        raise ContractError(name, check, f"{where}: {message}")

    context: dict[str, Any] = {"action": action, "lattice_shape": shape}
    if needs_flow(sampler):
        context["flow"] = (flow if flow is not None else identity_flow(action, shape)).to(device=device, dtype=dtype)
    incompatible = declares_incompatible(sampler, action)
    try:
        built: Sampler = build(sampler, params, context)
    except Exception as exc:  # noqa: BLE001 - whatever it raises, a pair that does not build fails here
        if incompatible:
            return ["declared_incompatible"]
        fail("builds", f"cannot be built ({type(exc).__name__}: {exc}); if it is not meant to sample this theory, "
             f"declare the theories it samples (theories = (...), now {getattr(sampler, 'theories', None)})")
    if incompatible:
        try:
            built.check_action(action)
        except ValueError:
            return ["declared_incompatible"]
        fail("declared_incompatible", f"declares (theories {sampler.theories}, applies_to) that it does not sample "
             f"this {action.theory!r} action, yet check_action accepts it: refuse it with a ValueError, or declare it")
    try:
        built.check_action(action)
    except ValueError as exc:
        fail("builds", f"check_action refuses the action ({exc}), but the sampler does not declare that it cannot "
             f"sample {action.theory!r} actions of this kind (theories = {getattr(sampler, 'theories', None)}; narrow "
             "applies_to for a sampler of particular actions)")

    field_shape = tuple(action.field_shape(shape))

    def run(s: int, n: int, steps: int):
        g = generator(device, s)
        state = built.init(action.sample_prior(n, shape, generator=g, dtype=dtype, device=device), action)
        infos = []
        for _ in range(steps):
            state, info = built.step(state, action, g)
            infos.append(info)
        return state, infos

    state, infos = run(seed + 5, 3, 3)
    check_meta(name, "step_contract (state.x)", state.x, (3, *field_shape), dtype, device)
    info = infos[-1]
    for key in ("accepted", "delta_H"):
        if key not in info:
            fail("step_contract", f"the info of a step has no {key!r} (keys: {sorted(info)})")
    check_meta(name, "step_contract (accepted)", info["accepted"], (3,), torch.bool, device)
    check_meta(name, "step_contract (delta_H)", info["delta_H"], (3,), None, device)
    state2, infos2 = run(seed + 5, 3, 3)
    if not (torch.equal(state.x, state2.x) and torch.equal(info["delta_H"], infos2[-1]["delta_H"])):
        fail("reproducible", "two runs with the same seed differ")
    ran = ["builds", "step_contract", "reproducible"]
    if not exactness:
        return ran

    g = generator(device, seed + 11)
    chains = built.init(action.sample_prior(n_chains, shape, generator=g, dtype=dtype, device=device), action)
    measured = []
    built_observables = [o if isinstance(o, Observable) else build(o, None, context) for o in observables
                         if observable_applies(o if isinstance(o, type) else type(o), action)]
    targets = [(component_name(o), o, power, value) for o in built_observables for power, value in o.exact().items()
               if power in (1, 2)]
    records: dict[int, list[Tensor]] = {i: [] for i in range(len(targets))}
    for t in range(n_thermalization + n_trajectories):
        chains, info = built.step(chains, action, g)
        if t >= n_thermalization:
            measured.append(torch.exp(-info["delta_H"].double()).nan_to_num(0.0))
            for i, (_, obs, power, _) in enumerate(targets):
                records[i].append(obs(chains.x).double() ** power)
    checks = [("<exp(-delta_H)>", torch.stack(measured), 1.0)]
    checks += [(f"<{label}^{power}>" if power > 1 else f"<{label}>", torch.stack(records[i]), value)
               for i, (label, _, power, value) in enumerate(targets)]
    for label, values, exact in checks:
        mean, error = _chain_means(values)
        if error == 0.0:
            if mean != exact:
                fail("exact", f"{label} = {mean:.8g} with no spread between the chains, exact {exact:.8g}")
            continue
        pull = (mean - exact) / error
        if not abs(pull) <= n_sigma:
            fail("exact", f"{label} = {mean:.6g} +- {error:.2g} over {n_chains} chains x {n_trajectories} steps "
                 f"(after {n_thermalization}), exact {exact:.6g}: {pull:+.1f} standard errors (at most {n_sigma:g})")
    ran.append("exact")
    return ran
