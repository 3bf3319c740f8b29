"""Plots: labelled axes with units, log scales, and no crash when fits were skipped."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.scaling_laws import fit
from experiments.scaling_laws import plot
from tests.experiments.scaling_laws import synthetic


@pytest.fixture(scope='module')
def isoflop_results():
  sweep = synthetic.chinchilla_isoflops(seed=0)
  return sweep, fit.fit_all(sweep, ['1', '2', '3'], bootstrap=4)


def test_axes_are_labelled_with_units(isoflop_results):
  sweep, results = isoflop_results
  loss_fig = plot.plot_loss_vs_compute(sweep, results)
  ax = loss_fig.axes[0]
  assert ax.get_xlabel() == 'training compute C (FLOP)' and ax.get_xscale() == 'log'
  assert ax.get_ylabel() == 'loss (nats/token)'
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert any('Approach 3' in t for t in labels) and any('envelope' in t for t in labels)

  iso = plot.plot_isoflops(sweep, results).axes[0]
  assert iso.get_xlabel() == 'parameters N' and iso.get_xscale() == 'log'
  # One parabola per budget, each drawn over its own sizes.
  assert len([line for line in iso.get_lines() if len(line.get_xdata()) == 100]) == 7

  ax_n, ax_d = plot.plot_optimal_allocation(sweep, results).axes[:2]
  assert ax_n.get_yscale() == ax_d.get_yscale() == 'log'
  assert 'parameters N' in ax_n.get_ylabel() and 'tokens D' in ax_d.get_ylabel()
  fitted = plot.plot_fitted_vs_observed(sweep, results).axes[0]
  assert fitted.get_xlabel() == 'observed loss (nats/token)'
  # Legends that could cover points sit outside the axes, in the figure.
  for figure in (plot.plot_isoflops(sweep, results), plot.plot_fitted_vs_observed(sweep, results)):
    assert figure.axes[0].get_legend() is None and len(figure.legends) == 1


def test_skipped_fits_leave_their_plots_out(tmp_path):
  sweep = synthetic.chinchilla_scatter(seed=3, n=40)
  results = {'approach2': fit.Skipped('approach2', 'no groups'),
             'approach3': fit.fit_approach3(sweep)}
  assert plot.plot_isoflops(sweep, results) is None
  written = plot.plot_all(sweep, results, str(tmp_path))
  assert sorted(p.rsplit('/', 1)[-1] for p in written) == [
      'fitted_vs_observed.png', 'loss_vs_compute.png', 'optimal_allocation.png']
  # The Approach 3 frontier curve is the compute-optimal loss: below every observed point's loss
  # up to noise.
  curve = plot.plot_loss_vs_compute(sweep, results).axes[0].get_lines()[0]
  c, loss = curve.get_xdata(), curve.get_ydata()
  on_curve = np.interp(np.log(sweep.C), np.log(c), loss)
  assert np.mean(sweep.L >= on_curve * 0.98) > 0.95
