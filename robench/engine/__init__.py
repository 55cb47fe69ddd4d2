"""Training and evaluation loops; they know plugins only through :mod:`robench.api`."""
