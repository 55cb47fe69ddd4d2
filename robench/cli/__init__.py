"""The ``robench`` command line: one module per command group; only parsing and printing."""
