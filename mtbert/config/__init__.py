"""The spec: TOML -> frozen attrs classes with every problem reported by its dotted path
(``spec``), the checks across components (``validation``), a run as phases (``phases``). May
import ``mtbert.base`` and ``mtbert.plugin``."""
