"""Hamiltonian Monte Carlo for lattice-flows: splitting integrators and the HMC sampler.

Registered through entry points like any third-party plugin; nothing here knows a theory.
"""
