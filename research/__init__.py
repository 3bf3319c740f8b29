"""lmforge's library.

`research.load(workdir)` gives a trained or imported run as a `research.LanguageModel` (config,
model, params, tokenizer; call it for logits, `.score`, `.generate`): research/loading.py.
`research.lm_eval_model(workdir_or_lm)` wraps one for lm-evaluation-harness
(`lm_eval.simple_evaluate(model=...)`): research/evaluation/harness.py. The rest lives in
submodules. These names are looked up on first use, so `import research` alone starts neither
JAX nor anything else.
"""

_LOADING = ('load', 'LanguageModel')
_HARNESS = ('lm_eval_model',)


def __getattr__(name):
  if name in _LOADING:
    from research import loading  # pylint: disable=g-import-not-at-top
    return getattr(loading, name)
  if name in _HARNESS:
    from research.evaluation import harness  # pylint: disable=g-import-not-at-top
    return getattr(harness, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_LOADING) + list(_HARNESS))
