"""PNG plots of scaling-law fits; `fit`'s command writes them all into --out.

Each function takes the points and the fits (as `fit.fit_all` returns them) and returns a
matplotlib Figure, or None when the fits it draws were skipped. Figures are built without pyplot,
so importing this module changes no global matplotlib state (a notebook's backend stays as it is).

* `loss_vs_compute.png`: every point's loss against compute, coloured by model size, with the
  loss of the compute-optimal allocation under Approach 3 (and Kaplan's L(N, D)) and Approach 1's
  envelope.
* `isoflop.png`: loss against model size per IsoFLOP group, with the fitted parabolas and minima.
* `fitted_vs_observed.png`: predicted against observed loss for the parametric fits.
* `optimal_allocation.png`: N_opt(C) and D_opt(C) per approach with 95% bootstrap bands, beside
  Approach 1's envelope points and Approach 2's IsoFLOP minima.
"""

from __future__ import annotations

import os
from typing import Mapping

import matplotlib
from matplotlib import colors as mcolors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from experiments.scaling_laws import data as data_lib
from experiments.scaling_laws import laws
from experiments.scaling_laws import optimal

COMPUTE_LABEL = 'training compute C (FLOP)'
LOSS_LABEL = 'loss (nats/token)'
PARAMS_LABEL = 'parameters N'
TOKENS_LABEL = 'training tokens D'
# Line styles differ too, because the approaches' frontiers often lie on top of each other.
STYLE = {
    'approach3': dict(color='tab:red', ls='-', label='Approach 3: L = E + A/N^α + B/D^β'),
    'approach2': dict(color='tab:blue', ls='--', label='Approach 2: IsoFLOP minima'),
    'approach1': dict(color='tab:green', ls='-.', label='Approach 1: loss envelope'),
    'kaplan_nd': dict(color='tab:purple', ls=':', label='Kaplan L(N, D)'),
}
# Frontier curves extend this factor beyond the largest budget in the data.
EXTRAPOLATE = 1000.0


def _figure(ncols: int = 1) -> tuple[Figure, list]:
  fig = Figure(figsize=(6.4 * ncols, 4.8), layout='constrained')
  FigureCanvasAgg(fig)
  axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
  return fig, axes


def _legend_below(fig: Figure, ax, ncols: int) -> None:
  """The axes' legend under the figure, outside the plotting area, so it never covers a point
  whatever the data (constrained layout makes room for it)."""
  fig.legend(*ax.get_legend_handles_labels(), loc='outside lower center', ncols=ncols,
             fontsize='small', frameon=False)


def _ok(results: Mapping, name: str):
  fit = results.get(name)
  return fit if fit is not None and hasattr(fit, 'values') else None


def _budgets(data: data_lib.ScalingData, extrapolate: float = 1.0) -> np.ndarray:
  return np.geomspace(data.C.min() / 2, data.C.max() * extrapolate, 200)


def _size_colours(data: data_lib.ScalingData):
  return mcolors.LogNorm(vmin=data.N.min(), vmax=data.N.max()), matplotlib.colormaps['viridis']


def plot_loss_vs_compute(data: data_lib.ScalingData, results: Mapping) -> Figure:
  fig, (ax,) = _figure()
  norm, cmap = _size_colours(data)
  points = ax.scatter(data.C, data.L, c=data.N, norm=norm, cmap=cmap, s=14, alpha=0.8,
                      label='observed runs')
  fig.colorbar(points, ax=ax, label=PARAMS_LABEL)
  c = _budgets(data)
  for name in ('approach3', 'kaplan_nd'):
    fit = _ok(results, name)
    if fit is not None:
      f = optimal.frontier(fit, c)
      style = STYLE[name]
      short = 'Approach 3' if name == 'approach3' else 'Kaplan L(N, D)'
      ax.plot(c, f.estimate.loss, color=style['color'], ls=style['ls'],
              label=f'{short}: loss at optimal N, D')
      if f.lower is not None:
        ax.fill_between(c, f.lower.loss, f.upper.loss, color=style['color'], alpha=0.2, lw=0)
  env = _ok(results, 'approach1')
  if env is not None:
    i = env.extra['envelope']
    ax.scatter(data.C[i], data.L[i], facecolors='none', edgecolors='black', s=50, lw=1,
               label='Approach 1 envelope points')
  ax.set_xscale('log')
  ax.set_xlabel(COMPUTE_LABEL)
  ax.set_ylabel(LOSS_LABEL)
  ax.set_title('Loss against compute, with the compute-optimal frontier')
  ax.legend(fontsize='small', loc='upper right')  # loss falls with compute: that corner is empty
  return fig


def plot_isoflops(data: data_lib.ScalingData, results: Mapping) -> Figure | None:
  fit = _ok(results, 'approach2')
  if fit is None:
    return None
  fig, (ax,) = _figure()
  minima = fit.extra['minima']
  budgets = np.array([m.C for m in minima])
  norm = mcolors.LogNorm(vmin=budgets.min(), vmax=budgets.max())
  cmap = matplotlib.colormaps['plasma']
  by_budget = {round(float(np.log(m.C)), 9): m for m in minima}
  for group in fit.extra['groups']:
    c_group = float(np.exp(np.mean(np.log(data.C[group]))))
    minimum = by_budget.get(round(np.log(c_group), 9))
    colour = cmap(norm(np.clip(c_group, budgets.min(), budgets.max())))
    ax.scatter(data.N[group], data.L[group], color=colour, s=14,
               alpha=0.9 if minimum else 0.3)
    if minimum is None:  # no minimum inside the sampled sizes: drawn faintly, unused
      continue
    log_n = np.linspace(np.log(data.N[group].min()), np.log(data.N[group].max()), 100)
    ax.plot(np.exp(log_n), np.polyval(minimum.coeffs, log_n), color=colour, lw=1.2)
  ax.scatter([m.N_opt for m in minima], [m.loss for m in minima], marker='*', s=120,
             color='black', zorder=3)
  # Proxy artists: one legend entry per kind of mark, colours explained by the colour bar.
  ax.scatter([], [], color='grey', s=14, label='runs (faint: group unused)')
  ax.plot([], [], color='grey', label='parabola in log N')
  ax.scatter([], [], marker='*', s=120, color='black', label='minimum (N_opt)')
  fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
               label='IsoFLOP budget C (FLOP)')
  ax.set_xscale('log')
  ax.set_xlabel(PARAMS_LABEL)
  ax.set_ylabel(LOSS_LABEL)
  ax.set_title(f'IsoFLOP profiles ({len(minima)} budgets with a minimum)')
  _legend_below(fig, ax, ncols=3)  # inside, a corner always held some run's point
  return fig


def plot_fitted_vs_observed(data: data_lib.ScalingData, results: Mapping) -> Figure | None:
  fits = [f for f in (_ok(results, 'approach3'), _ok(results, 'kaplan_nd')) if f is not None]
  if not fits:
    return None
  fig, (ax,) = _figure()
  for fit in fits:
    law = (laws.Chinchilla.from_mapping(fit.values) if fit.name == 'approach3' else
           laws.Kaplan.from_mapping(fit.values))
    predicted = law.loss(data.N, data.D)
    rms = float(np.sqrt(np.mean(np.log(predicted / data.L)**2)))
    ax.scatter(data.L, predicted, s=12, alpha=0.7, color=STYLE[fit.name]['color'],
               label=f'{STYLE[fit.name]["label"]} (rms log error {rms:.3f})')
  lo, hi = data.L.min() * 0.97, data.L.max() * 1.03
  ax.plot([lo, hi], [lo, hi], color='black', lw=1, ls='--', label='predicted = observed')
  ax.set_xlim(lo, hi)
  ax.set_ylim(lo, hi)
  ax.set_aspect('equal')
  ax.set_xlabel(f'observed {LOSS_LABEL}')
  ax.set_ylabel(f'predicted {LOSS_LABEL}')
  ax.set_title('Fitted against observed loss')
  _legend_below(fig, ax, ncols=1)  # the diagonal crosses both upper corners: no free corner
  return fig


def plot_optimal_allocation(data: data_lib.ScalingData, results: Mapping) -> Figure | None:
  fits = [f for f in (_ok(results, n) for n in optimal.FRONTIER_FITS) if f is not None]
  if not fits:
    return None
  fig, (ax_n, ax_d) = _figure(ncols=2)
  c = _budgets(data, EXTRAPOLATE)
  for fit in fits:
    f = optimal.frontier(fit, c)
    style = STYLE[fit.name]
    exps = f'a = {fit.values["a"]:.3f}, b = {fit.values["b"]:.3f}'
    for ax, field in ((ax_n, 'N_opt'), (ax_d, 'D_opt')):
      ax.plot(c, getattr(f.estimate, field), color=style['color'], ls=style['ls'],
              label=f'{style["label"]} ({exps})')
      if f.lower is not None:
        ax.fill_between(c, getattr(f.lower, field), getattr(f.upper, field), color=style['color'],
                        alpha=0.15, lw=0)
  env = _ok(results, 'approach1')
  if env is not None:
    i = env.extra['envelope']
    ax_n.scatter(data.C[i], data.N[i], s=16, color=STYLE['approach1']['color'], marker='o',
                 label='Approach 1 envelope points')
    ax_d.scatter(data.C[i], data.D[i], s=16, color=STYLE['approach1']['color'], marker='o',
                 label='Approach 1 envelope points')
  iso = _ok(results, 'approach2')
  if iso is not None:
    minima = iso.extra['minima']
    for ax, field in ((ax_n, 'N_opt'), (ax_d, 'D_opt')):
      ax.scatter([m.C for m in minima], [getattr(m, field) for m in minima], s=30, marker='D',
                 color=STYLE['approach2']['color'], edgecolors='black', lw=0.5,
                 label='Approach 2 IsoFLOP minima')
  for ax, label in ((ax_n, f'compute-optimal {PARAMS_LABEL} (N_opt)'),
                    (ax_d, f'compute-optimal {TOKENS_LABEL} (D_opt)')):
    ax.axvspan(data.C.max(), c.max(), color='grey', alpha=0.1, lw=0,
               label='beyond the data (extrapolation)')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel(COMPUTE_LABEL)
    ax.set_ylabel(label)
    ax.legend(fontsize='x-small', loc='upper left')  # allocations rise with compute
  ax_n.set_title('Optimal model size (shaded: 95% bootstrap bands)')
  ax_d.set_title('Optimal training tokens (shaded: 95% bootstrap bands)')
  return fig


PLOTS = {
    'loss_vs_compute.png': plot_loss_vs_compute,
    'isoflop.png': plot_isoflops,
    'fitted_vs_observed.png': plot_fitted_vs_observed,
    'optimal_allocation.png': plot_optimal_allocation,
}


def plot_all(data: data_lib.ScalingData, results: Mapping, out_dir: str) -> list[str]:
  """Writes every plot whose fits exist into `out_dir`; returns the paths written."""
  written = []
  for filename, make in PLOTS.items():
    fig = make(data, results)
    if fig is None:
      continue
    path = os.path.join(out_dir, filename)
    fig.savefig(path, dpi=120)
    written.append(path)
  return written
