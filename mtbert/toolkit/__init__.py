"""Helpers for plugin authors: public, documented in docs/plugins.md, used by the built-in plugins.

The core never imports these; they serve methods.

- :mod:`mtbert.toolkit.pertask`: per-task gradients of the shared parameters
  (``PerTaskGradients``), their block Gram matrices and the coefficient
  algebra that PCGrad and GradVac are built on; a new gradient method that
  needs each task's gradient subclasses it and writes ``coefficients``.
- :mod:`mtbert.toolkit.bert`: the BERT encoder implementation (``MinBert``,
  ``BertConfig``, layer slots for adapters) and the name maps to and from
  Hugging Face BERT checkpoints.
- :mod:`mtbert.toolkit.pretrained`: where packaged and local checkpoints are
  found (``minilm-l6``, hub ids in the local cache, directories).
- :mod:`mtbert.toolkit.smalllinalg`: T x T solves that never wait for a GPU
  (torch.linalg's solvers check their results on the host).
"""
