"""What a plugin author tests with: exact references for gradient methods and the cases that break them.

- :mod:`mtbert.testing.cases`: task-gradient matrices of the hard case families (nearly
  parallel or opposite, dependent, zero, norms spread over six orders of magnitude).
- :mod:`mtbert.testing.references`: each built-in gradient method's answer computed the plain
  way in float64 (faces enumerated, a conic solver, an SVD), to hold a method to.
"""
