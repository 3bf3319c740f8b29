"""Parameterizations across widths: μP and per-class learning rates (issue 21).

Modules: `coord_check` (mean |activation| of every layer across widths after a few steps, per
parameterization: the check that μP is implemented right; CLI), `run` (the learning-rate
transfer study: loss over learning rate x width per parameterization, trained by the
scaling-law sweep runner, and the optimal rate's drift with width; CLI) and `plot` (their
PNGs). The
parameterizations themselves live in the library: research/models/transformer.py (init,
output and attention multipliers) and research/training/optimizers.py (per-class learning
rates, Adam-atan2). Nothing is imported here.
"""
