"""Kept for plugins written against ``mtbert.spec``: the module is ``mtbert.config.spec``.

This name is that very module (not a copy), so patching or reading either is the same."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("mtbert.config.spec")
