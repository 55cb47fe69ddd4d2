"""robench's built-in plugins, installed as the package ``robench_plugins``.

They register through the same entry points (``pyproject.toml``) as any third-party
plugin would; the core imports none of them by name.
"""
