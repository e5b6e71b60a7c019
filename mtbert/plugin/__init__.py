"""The plugin API, and the facade for plugin authors.

Owns the hooks (``hookspecs``), what each kind of component provides
(``interfaces``), the spec-data converter and its validators (``structure``),
the registry and the loading of entry points (``registry``, ``loading``), and
making a component through the registry (``making``). May import
``mtbert.base`` only.

A plugin author imports from here::

    from mtbert.plugin import hookimpl, Balancer, GradientMethod, at_least, make

(the earlier paths, ``mtbert.hookspecs``, ``mtbert.interfaces``,
``mtbert.structure``, ``mtbert.errors``, keep working). Helpers the built-in
plugins use are in ``mtbert.toolkit``; what to test a plugin with, in
``mtbert.testing``.
"""

from mtbert.base.errors import DataError, MtbertError, PluginError, SpecError  # noqa: F401
from mtbert.plugin.hookspecs import hookimpl  # noqa: F401
from mtbert.plugin.interfaces import (  # noqa: F401
    OUTPUT_KINDS, Balancer, Encoded, Encoder, GradientMethod, Head, LabelSpec, LoopContext, Loss, Metric,
    ParamGroup, Reader, Regularizer, Sampler, SamplerContext, SentenceEmbedding, SequenceClassifier, TaskInfo,
)
from mtbert.plugin.making import make  # noqa: F401
from mtbert.plugin.structure import (  # noqa: F401
    at_least, greater_than, in_range, non_empty, probability,
)
