"""lattice-flows-xy: the 2D (and 3D) XY model as a lattice-flows plugin, a separately installed package.

Components, registered by the entry points of this package's ``pyproject.toml``:

- action ``xy``: :class:`~lattice_flows_xy.action.XY`, ``S = -beta sum_{n, mu} cos(theta_n - theta_{n + mu})``;
- observables ``xy_energy``, ``helicity_modulus``, ``vortex_density``, ``xy_magnetization_squared``
  (:mod:`lattice_flows_xy.observables`), with exact values from :mod:`lattice_flows_xy.exact` on small 2D lattices;
- flow ``xy_mobius``: :class:`~lattice_flows_xy.flow.MobiusCouplingFlow`.
"""

from .action import XY
from .flow import MobiusCouplingFlow
from .observables import HelicityModulus, MagnetizationSquared, VortexDensity, XYEnergy

__all__ = ["XY", "XYEnergy", "HelicityModulus", "VortexDensity", "MagnetizationSquared", "MobiusCouplingFlow"]
__version__ = "0.1.0"
