"""Kept for plugins written against ``mtbert.structure``: the module is ``mtbert.plugin.structure``.

This name is that very module (not a copy), so patching or reading either is the same."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("mtbert.plugin.structure")
