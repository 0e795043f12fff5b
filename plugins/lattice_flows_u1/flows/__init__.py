"""Gauge-equivariant flows for 2D U(1) link fields ``(B, 2, L_0, L_1)``.

- :mod:`.coupling`: ``u1_plaquette_coupling``, plaquette coupling layers (Kanwar et al. 2003.06413)
  with a circle map chosen in the spec (:mod:`.circle_maps`: NCP mixtures or rational-quadratic splines);
- :mod:`.stout`: ``u1_stout``, smooth stout-like field transformations (Jin, 2201.01862);
- :mod:`.poisson`: ``u1_plaquette_poisson``, every plaquette through one shared spline, the links
  through a Poisson solve (2D only: it uses the independence of 2D U(1) plaquettes).
"""
