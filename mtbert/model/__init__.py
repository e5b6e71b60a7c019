"""The model: the shared encoder with the tasks' heads and adapters (``multitask``), poolings
(``pooling``), and building the model and the tasks' data from a spec (``build``). May import
the layers below: ``base``, ``plugin``, ``config``, ``data``."""
