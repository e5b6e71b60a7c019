"""Data: a file's rows read and checked, tokenized (``fasttok``'s fast path), held as flat
arrays (``tokenized``), cached on disk (``cache``), batched into streams (``splits``). May import
``mtbert.base``, ``mtbert.plugin`` and ``mtbert.config``."""
