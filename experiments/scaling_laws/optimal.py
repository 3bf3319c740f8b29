r"""Compute-optimal frontier from a fit: N_opt(C), D_opt(C), tokens per parameter, predicted loss.

    python -m experiments.scaling_laws.optimal --fit=fits/fit.json --flops=5.76e23,1e24 \
        [--approach=3]

prints, per fit, a table with 95% intervals when fit.json holds bootstrap samples. Budgets are
spent as C = 6 N D:

* approach3 (L = E + A / N^alpha + B / D^beta): N_opt = G (C / 6)^(beta / (alpha + beta)),
  G = (alpha A / (beta B))^(1 / (alpha + beta)), D_opt = C / (6 N_opt), loss L(N_opt, D_opt).
* kaplan_nd: the minimum of Kaplan's fitted L(N, D) along C = 6 N D (closed form in
  `laws.Kaplan.optimal_n`).
* approach1, approach2: the fitted power laws N_opt = k_N C^a and D_opt = k_D C^b; they predict no
  loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.optimize

from experiments.scaling_laws import laws
from research.errors import UserError
from research.errors import exit_on_user_error

# Fits that define a frontier, in the order tables list them.
FRONTIER_FITS = ('approach3', 'approach2', 'approach1', 'kaplan_nd')
APPROACH_ALIASES = {'3': 'approach3', '2': 'approach2', '1': 'approach1', 'kaplan': 'kaplan_nd'}
CI_LEVEL = 0.95


@dataclasses.dataclass
class FitSpec:
  """What a frontier needs from a fit: its name, point estimates and bootstrap samples.

  `experiments.scaling_laws.fit.Fit` has the same three attributes and can be used directly.
  """

  name: str
  values: dict[str, float]
  samples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  law: str = ''


@dataclasses.dataclass
class Allocation:
  """Compute-optimal allocation for budgets C (arrays broadcast like C and the coefficients)."""

  C: np.ndarray
  N_opt: np.ndarray
  D_opt: np.ndarray
  loss: np.ndarray  # NaN where the fit predicts no loss

  @property
  def tokens_per_param(self) -> np.ndarray:
    return self.D_opt / self.N_opt


def allocation(name: str, values: Mapping[str, Any], c) -> Allocation:
  """The compute-optimal allocation of budgets `c` under fit `name` with coefficients `values`.

  Coefficients may be arrays (e.g. bootstrap samples of shape (S, 1) against budgets of shape (M,)).
  """
  c = np.asarray(c, dtype=np.float64)
  v = {k: np.asarray(x, dtype=np.float64) for k, x in values.items()}
  if name == 'approach3':
    law = laws.Chinchilla(E=v['E'], A=v['A'], B=v['B'], alpha=v['alpha'], beta=v['beta'])
  elif name == 'kaplan_nd':
    law = laws.Kaplan(Nc=v['Nc'], Dc=v['Dc'], alpha_N=v['alpha_N'], alpha_D=v['alpha_D'])
  elif name in ('approach1', 'approach2'):
    n_opt = laws.power_law(c, v['k_N'], v['a'])
    d_opt = laws.power_law(c, v['k_D'], v['b'])
    return Allocation(C=c, N_opt=n_opt, D_opt=d_opt, loss=np.full(np.shape(n_opt), np.nan))
  else:
    raise ValueError(f'{name!r} defines no compute-optimal frontier; expected one of '
                     f'{FRONTIER_FITS}')
  n_opt = law.optimal_n(c)
  d_opt = laws.tokens_for_budget(n_opt, c)
  return Allocation(C=np.broadcast_to(c, np.shape(n_opt)), N_opt=n_opt, D_opt=d_opt,
                    loss=law.loss(n_opt, d_opt))


@dataclasses.dataclass
class Frontier:
  """Point estimates and, with bootstrap samples, percentile intervals, per quantity."""

  fit: str
  estimate: Allocation
  lower: Allocation | None = None
  upper: Allocation | None = None
  n_samples: int = 0


def frontier(fit, c, level: float = CI_LEVEL) -> Frontier:
  """N_opt, D_opt, D/N and loss at budgets `c` for `fit` (a FitSpec or fit.Fit), with intervals."""
  c = np.atleast_1d(np.asarray(c, dtype=np.float64))
  estimate = allocation(fit.name, fit.values, c)
  samples = {k: np.asarray(s, dtype=np.float64) for k, s in (fit.samples or {}).items()}
  n_samples = min((len(s) for s in samples.values()), default=0)
  if n_samples < 2:
    return Frontier(fit=fit.name, estimate=estimate)
  # One allocation per resample: coefficients (S, 1) against budgets (M,).
  per_sample = allocation(fit.name, {k: s[:n_samples, None] for k, s in samples.items()}, c)
  tail = 50 * (1 - level)

  def percentile(q):
    return Allocation(
        C=c, **{f: np.percentile(getattr(per_sample, f), q, axis=0)
                for f in ('N_opt', 'D_opt', 'loss')})

  return Frontier(fit=fit.name, estimate=estimate, lower=percentile(tail),
                  upper=percentile(100 - tail), n_samples=n_samples)


def tokens_per_param_interval(fit, c, level: float = CI_LEVEL):
  """Percentile interval of D_opt / N_opt at `c` (not the ratio of the N and D intervals)."""
  samples = {k: np.asarray(s, dtype=np.float64) for k, s in (fit.samples or {}).items()}
  n_samples = min((len(s) for s in samples.values()), default=0)
  if n_samples < 2:
    return None
  per_sample = allocation(fit.name, {k: s[:n_samples, None] for k, s in samples.items()},
                          np.atleast_1d(c))
  tail = 50 * (1 - level)
  return tuple(np.percentile(per_sample.tokens_per_param, [tail, 100 - tail], axis=0))


def minimize_along_budget(loss_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], c: float,
                          n_range: tuple[float, float] | None = None,
                          grid_points: int = 4001) -> tuple[float, float, float]:
  """Brute force: (N, D, loss) minimising loss_fn(N, C / (6 N)) over N, for any fitted law.

  A log-spaced grid over `n_range` (default: 1 parameter to C / 6, i.e. D >= 1 token) locates the
  minimum; a bounded scalar search between its grid neighbours refines it.
  """
  lo, hi = n_range or (1.0, c / laws.FLOPS_PER_PARAM_TOKEN)
  log_n = np.linspace(np.log(lo), np.log(hi), grid_points)
  values = loss_fn(np.exp(log_n), laws.tokens_for_budget(np.exp(log_n), c))
  i = int(np.nanargmin(values))
  left, right = log_n[max(i - 1, 0)], log_n[min(i + 1, grid_points - 1)]
  result = scipy.optimize.minimize_scalar(
      lambda x: float(loss_fn(np.exp(x), laws.tokens_for_budget(np.exp(x), c))),
      bounds=(left, right), method='bounded', options={'xatol': 1e-10})
  n = float(np.exp(result.x))
  return n, float(laws.tokens_for_budget(n, c)), float(result.fun)


# fit.json.


def load_fits(path: str) -> dict[str, FitSpec]:
  """The fits in a fit.json that define a frontier and were not skipped."""
  label = f'--fit={path}'
  try:
    with open(path) as f:
      content = json.load(f)
  except FileNotFoundError:
    raise UserError(f'{label}: no such file; run python -m experiments.scaling_laws.fit '
                    'first') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f'{label} is not JSON ({e}): pass the fit.json that fit wrote') from None
  fits = content.get('fits') if isinstance(content, dict) else None
  if not isinstance(fits, dict):
    raise UserError(f'{label} has no "fits" object: pass the fit.json that fit wrote')
  specs = {}
  for name in FRONTIER_FITS:
    entry = fits.get(name)
    if not entry or entry.get('status') != 'ok':
      continue
    specs[name] = FitSpec(name=name, values={k: p['value'] for k, p in entry['params'].items()},
                          samples={k: np.asarray(s) for k, s in
                                   entry.get('bootstrap_samples', {}).items()},
                          law=entry.get('law', ''))
  return specs


def parse_flops(text: str) -> np.ndarray:
  try:
    values = np.array([float(x) for x in text.split(',') if x.strip()], dtype=np.float64)
  except ValueError:
    values = np.array([])
  if values.size == 0 or not np.all(np.isfinite(values) & (values > 0)):
    raise UserError(f'--flops={text}: expected comma-separated positive FLOP budgets such as '
                    '5.76e23,1e24')
  return values


def _with_interval(value: float, lo: float | None, hi: float | None, fmt: str = '.3g') -> str:
  if not np.isfinite(value):
    return '-'
  text = f'{value:{fmt}}'
  if lo is not None and np.isfinite(lo):
    text += f' [{lo:{fmt}}, {hi:{fmt}}]'
  return text


def format_frontier_table(fit, flops) -> str:
  f = frontier(fit, flops)
  ratio_ci = tokens_per_param_interval(fit, flops)
  header = f'{fit.name}: {fit.law or ""}'.rstrip(': ')
  header += (f'; 95% intervals from {f.n_samples} bootstrap resamples' if f.n_samples else
             '; no bootstrap samples: point estimates only')
  rows = [header, f'{"C (FLOP)":>10}  {"N_opt (params)":<30} {"D_opt (tokens)":<30} '
          f'{"D/N (tokens/param)":<24} loss (nats/token)']

  def cell(field, i):
    lo = getattr(f.lower, field)[i] if f.lower else None
    hi = getattr(f.upper, field)[i] if f.upper else None
    return _with_interval(getattr(f.estimate, field)[i], lo, hi)

  for i, c in enumerate(np.atleast_1d(flops)):
    ratio = _with_interval(f.estimate.tokens_per_param[i], *(
        (ratio_ci[0][i], ratio_ci[1][i]) if ratio_ci else (None, None)))
    loss = cell('loss', i) if np.isfinite(f.estimate.loss[i]) else '- (fit predicts no loss)'
    rows.append(f'{c:>10.3g}  {cell("N_opt", i):<30} {cell("D_opt", i):<30} {ratio:<24} {loss}')
  return '\n'.join(rows)


def _parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m experiments.scaling_laws.optimal',
      description='Compute-optimal N, D, D/N and loss for FLOP budgets, from a fit.json.')
  parser.add_argument('--fit', required=True,
                      help='fit.json written by experiments.scaling_laws.fit')
  parser.add_argument('--flops', required=True, help='comma-separated budgets, e.g. 5.76e23,1e24')
  parser.add_argument('--approach', default='all',
                      help='all (default), or one of 1, 2, 3, kaplan (or their fit.json names)')
  return parser.parse_args(argv)


def run(fit_path: str, flops, approach: str = 'all', log: Callable[[str], None] = print) -> None:
  """Everything the command does: print one table per requested fit."""
  budgets = parse_flops(flops) if isinstance(flops, str) else np.atleast_1d(flops)
  specs = load_fits(fit_path)
  if approach != 'all':
    name = APPROACH_ALIASES.get(approach, approach)
    if name not in FRONTIER_FITS:
      raise UserError(f'--approach={approach}: expected all or one of 1, 2, 3, kaplan')
    if name not in specs:
      raise UserError(f'--approach={approach}: --fit={fit_path} holds no successful {name} fit '
                      f'(it has: {", ".join(specs) or "none"})')
    specs = {name: specs[name]}
  if not specs:
    raise UserError(f'--fit={fit_path} holds no fit with a compute-optimal frontier (one of '
                    f'{", ".join(FRONTIER_FITS)})')
  log('\n\n'.join(format_frontier_table(spec, budgets) for spec in specs.values()))


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
  args = _parse_args(argv)
  run(args.fit, args.flops, args.approach)


if __name__ == '__main__':
  main(sys.argv[1:])
