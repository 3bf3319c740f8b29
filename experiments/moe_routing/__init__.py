"""Mixture-of-experts routing study: a dense baseline against MoE routers at equal active FLOPs.

  variants.py  the variant grid (config `moe_routing` section -> per-variant training configs)
  run.py       trains every variant (resumable), writes results.csv / results.md and the plots
  plot.py      the figures, from the variants' logs (also a command of its own)
"""
