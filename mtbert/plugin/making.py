"""Making a component through the registry, and checking that it meets its kind's interface.

The core makes every component here, so a plugin that returns the wrong thing
is reported by name (its plugin and package) instead of failing somewhere
inside the loop.
"""

from __future__ import annotations

import inspect
from typing import Any

from mtbert.base.errors import PluginError
from mtbert.plugin.registry import Registry, singular

# What the core calls on each kind of component (see mtbert/plugin/interfaces.py).
REQUIRED = {
    "encoders": ("forward", "embed", "hidden_size", "tokenizer", "save_architecture", "parameters"),
    "readers": ("rows",),
    "heads": ("forward", "predict", "parameters", "output_kind"),
    "losses": ("__call__",),
    "metrics": ("__call__", "normalized"),
    "samplers": ("plan", "steps_per_epoch"),
    "optimizers": ("step", "zero_grad", "param_groups", "defaults", "state_dict", "load_state_dict"),
    "schedulers": ("step", "get_last_lr", "state_dict", "load_state_dict"),
    "balancers": ("setup", "weigh", "after_step", "epoch_end", "evaluation_end", "stats", "parameters",
                  "state_dict", "load_state_dict"),
    "gradients": ("setup", "backward", "finish"),
    "regularizers": ("setup", "penalty", "after_step", "stats"),
    "adapters": ("parameters",),
}

# Methods renamed for one vocabulary; an object with only the first name still meets the interface.
FIRST_NAMES = {"after_step": "step_end"}


def call(obj, method: str, *args):
    """``obj.method(*args)``, or the method's first name on a plugin written before the rename."""
    bound = getattr(obj, method, None) or getattr(obj, FIRST_NAMES[method])
    return bound(*args)


def make(registry: Registry, component, *args, **kwargs) -> Any:
    """Build one component (a ``mtbert.config.spec.ComponentSpec``: its kind, name and options)
    and check it meets its kind's interface."""
    entry = registry.get(component.kind, component.name)
    try:
        inspect.signature(entry.factory).bind(component.options, *args, **kwargs)
    except TypeError as exc:
        raise PluginError(f"{singular(component.kind)} \"{component.name}\" from plugin '{entry.plugin}' "
                          f"(package {entry.package}) cannot be called as the core calls a {singular(component.kind)} "
                          f"factory ({exc}); see docs/plugins.md") from None
    except ValueError:  # no signature to check (a builtin): just call it
        pass
    obj = entry.factory(component.options, *args, **kwargs)
    missing = [a for a in REQUIRED[entry.kind] if not hasattr(obj, a) and not hasattr(obj, FIRST_NAMES.get(a, a))]
    if missing:
        raise PluginError(f"{singular(component.kind)} \"{component.name}\" from plugin '{entry.plugin}' "
                          f"(package {entry.package}) returned {type(obj).__name__}, which lacks "
                          f"{', '.join(missing)}; see docs/plugins.md for the interface")
    return obj


