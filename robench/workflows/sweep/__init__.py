"""``robench sweep``: grids of ordinary runs, each run once (see docs/sweeps.md).

``grid`` reads sweep files and flags into ``--set`` items, ``plan`` checks every point
and knows which are recorded, ``point`` runs one point (lock, resume, record),
``local`` and ``slurm`` are the runners.
"""
