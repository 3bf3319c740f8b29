"""lmforge's library.

`research.load(workdir)` gives a trained or imported run as a `research.LanguageModel` (config,
model, params, tokenizer; call it for logits, `.score`, `.generate`): research/loading.py. The
rest lives in submodules. Both names are looked up on first use, so `import research` alone
starts neither JAX nor anything else.
"""

_LOADING = ('load', 'LanguageModel')


def __getattr__(name):
  if name in _LOADING:
    from research import loading  # pylint: disable=g-import-not-at-top
    return getattr(loading, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_LOADING))
