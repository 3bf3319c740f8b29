"""Parameterizations across widths: μP and per-class learning rates (issue 21).

Modules: `coord_check` (mean |activation| of every layer across widths after a few steps, per
parameterization: the check that μP is implemented right; CLI) and `plot` (its PNGs). The
parameterizations themselves live in the library: research/models/transformer.py (init,
output and attention multipliers) and research/training/optimizers.py (per-class learning
rates, Adam-atan2). Nothing is imported here.
"""
