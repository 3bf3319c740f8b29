"""Scaling-law fits: Kaplan et al. 2020 and Chinchilla (Hoffmann et al. 2022) Approaches 1-3.

Modules: `data` (read results CSVs), `laws` (the law forms), `fit` (fits with bootstrap intervals;
CLI), `optimal` (compute-optimal frontier; CLI) and `plot` (PNGs). Nothing is imported here, so
`python -m experiments.scaling_laws.fit` runs without importing itself twice.
"""
