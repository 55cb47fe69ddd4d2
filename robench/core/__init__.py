"""The core: the plugin registry, configuration, paths, seeding, progress and FLOP counts.

It names no plugin; plugins reach it through entry points (:mod:`robench.core.registry`).
"""
