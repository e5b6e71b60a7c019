"""Kept for plugins written against ``mtbert.build``: the module is ``mtbert.model.build``.

This name is that very module (not a copy), so patching or reading either is the same."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("mtbert.model.build")
