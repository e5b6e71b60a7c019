"""A run on disk: its directory (``rundir``), the training state (``state``), checkpoints
(``checkpoint``), opening a finished run (``finished``). May import ``base``, ``plugin``,
``config``, ``data`` and ``model``."""
