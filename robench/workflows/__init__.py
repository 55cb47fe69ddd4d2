"""Workflows: what one command does, start to end, without the CLI's parsing or printing
(run, evaluate, ablate, bench, scaffold, sweep)."""
