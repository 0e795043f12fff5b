"""2D U(1) lattice gauge theory for lattice-flows: the Wilson action, its observables, its exact
solution and an exact direct sampler. Registered through entry points like any third-party plugin.

Fields are link angles ``x`` of shape ``(B, 2, L_0, L_1)`` (see :mod:`lattice_flows_u1.geometry`).
"""
