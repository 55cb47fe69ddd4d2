"""Evaluation: the protocol (which attacks, how many points), the sequential attack
loop, the checks that attacks are honest (probe, contract) and the gradient-masking checks."""
