"""mtbert-focal: an example third-party plugin package for mtbert.

It provides two components, each registered from its own plugin module
through an entry point of the ``mtbert`` group (see pyproject.toml):

- loss ``focal`` (:mod:`mtbert_focal.losses`): focal loss, Lin et al. 2017;
- gradient method ``rlw`` (:mod:`mtbert_focal.gradients`): random loss
  weighting, Lin et al. 2022.
"""

__version__ = "0.1.0"
