"""Helpers for parity tests against transformers: random references whose weights all count,
greedy generations on both sides, exports written and loaded back."""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from research.inference import decoding
from research.models import hf
from research.models.hf import streaming


def save_references(names, build, tmp_path_factory) -> dict:
  """name -> (HF reference model, its save_pretrained directory), `build(name)` making each."""
  out = {}
  for name in names:
    model = build(name)
    path = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(path)
    out[name] = model, path
  return out


def import_all(saved: dict, dtype: str | None = None) -> dict:
  """name -> (config, host params) of each saved reference's import, with model.dtype set to
  `dtype` if given (the import's 'auto' is float32 on CPU, where the tests run)."""
  out = {}
  for name, (_, path) in saved.items():
    config, params = hf.convert(path)
    if dtype:
      config.model.dtype = dtype
    out[name] = config, params
  return out


def randomise(model, *, std: float, norm_offset: float = 1.0, embed_std: float | None = None,
              final_norm: float | None = None):
  """Every weight of a torch model drawn again, away from HF's init (zero biases, unit norms).

  Large weights spread the logits, so greedy choices are never near-ties. Norm weights are
  `norm_offset` + 0.1 N(0, 1) (0 for Gemma's 1 + w norms); `embed_std` and `final_norm` (the
  final norm's offset) let tied models whose embeddings are scaled up (Gemma) predict other
  tokens than the one they read.
  """
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn_like(p)
      if name == 'model.norm.weight' and final_norm is not None:
        p.copy_(final_norm + 0.1 * noise)
      elif 'norm' in name:
        p.copy_(norm_offset + 0.1 * noise)
      elif 'embed' in name and embed_std is not None:
        p.copy_(embed_std * noise)
      else:
        p.copy_(std * noise)
  return model.eval()


def hf_greedy(model, prompt_BP: np.ndarray, new_tokens: int) -> np.ndarray:
  """transformers' greedy continuation (prompt not included)."""
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    out = model.generate(torch.tensor(prompt_BP), do_sample=False,
                         attention_mask=torch.ones(prompt_BP.shape, dtype=torch.long),
                         max_new_tokens=new_tokens, pad_token_id=0)
  return out.numpy()[:, prompt_BP.shape[1]:]


def lmforge_greedy(model, params, prompt_BP: np.ndarray, new_tokens: int) -> np.ndarray:
  """lmforge's greedy continuation through its KV cache (research.inference.decoding)."""
  return np.asarray(decoding.generate(model, params, prompt_BP, jax.random.key(0),
                                      max_new_tokens=new_tokens, temperature=0.0))


def hf_logits(model, tokens_BT: np.ndarray) -> np.ndarray:
  import torch  # pylint: disable=g-import-not-at-top
  with torch.no_grad():
    return model(torch.tensor(tokens_BT)).logits.numpy()


def assert_trees_equal(a, b) -> None:
  """The same leaves, bit for bit (np.array_equal on each)."""
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(b)}
  assert flat_a.keys() == flat_b.keys()
  for key, value in flat_a.items():
    assert np.asarray(value).dtype == np.asarray(flat_b[key]).dtype, key
    assert np.array_equal(np.asarray(value), np.asarray(flat_b[key])), key


def write_export(family, config, params, out_dir: str) -> list[str]:
  """config.json and safetensors of host `params` as `family` writes them (what
  research.convert --to=hf does, without a workdir)."""
  specs = streaming.hf_specs(family, config, params)
  files = streaming.write_safetensors(out_dir, specs,
                                      streaming.hf_tensor_fn(family, config, params), '5GB')
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(family.hf_config(config), f, indent=2, sort_keys=True)
  return files


def load_export(out_dir: str, architecture: str, **kwargs):
  """The exported model through transformers, checked to have every key and nothing else."""
  import transformers  # pylint: disable=g-import-not-at-top
  model, info = getattr(transformers, architecture).from_pretrained(
      out_dir, output_loading_info=True, **kwargs)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'], info
  return model.eval()
