"""The two-flavour Schwinger model for lattice-flows: 2D U(1) gauge links with two degenerate flavours of
Wilson fermions, sampled with pseudofermions (``schwinger``) or an exact dense determinant
(``schwinger_det``). Registered through entry points like any third-party plugin; built on the U(1) plugin's
gauge action, observables and flows.

Modules: :mod:`.dirac` (the Wilson-Dirac operator), :mod:`.cg` (the batched conjugate-gradient solver),
:mod:`.action` (the two actions).
"""
