"""Results: run records and evaluation reports (one file per entry, written atomically),
the leaderboards built from them, and plots."""
