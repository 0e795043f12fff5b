"""Real scalar phi^4 theory for lattice-flows: the action in two parameterisations, its observables,
the exact free-field (``lambda = 0``) values, and a Real NVP affine coupling flow. Registered through
entry points like any third-party plugin.

Fields are real site variables ``x`` of shape ``(B, L_0, ..., L_{D-1})`` on a periodic lattice of any
dimension ``D`` (see :mod:`lattice_flows_phi4.action`).
"""
