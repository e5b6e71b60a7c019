"""Built-in mtbert plugins, installed as the package ``mtbert_plugins``.

Each module is one plugin: its config class, its implementation and its
hookimpl, registered through the ``mtbert`` entry-point group in
pyproject.toml exactly as a third-party package would register its own.
"""
