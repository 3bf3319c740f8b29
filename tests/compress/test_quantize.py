"""Quantization (research/layers/quantization.py, research/compress/quantize.py): numerics
within their bounds, the quantize command end to end, its one-line errors, and QAT."""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import qwix

import research
from research import config_lib
from research.compress import quantize
from research.errors import ConfigError
from research.layers import quantization
from research.training import trainer
from tests.helpers import PatternDataset, tiny_config

TEXT = ('ROMEO: But soft, what light through yonder window breaks?\n'
        'JULIET: O Romeo, Romeo, wherefore art thou Romeo?\n') * 20
ONE_DEVICE = lambda: jax.devices()[:1]


@pytest.mark.parametrize('qtype', ['int8', 'int4'])
@pytest.mark.parametrize('group_size', [0, 16])
@pytest.mark.parametrize('method', ['absmax', 'minmax'])
def test_dequantize_error_within_half_a_step(qtype, group_size, method):
  w_IO = jax.random.normal(jax.random.key(0), (64, 48)) * jnp.linspace(0.1, 3.0, 48)
  tiled = {0: group_size} if group_size else None
  q = qwix.quantize(w_IO, qtype, channelwise_axes=[1], tiled_axes=tiled,
                    calibration_method=method)
  assert q.qvalue.dtype == jnp.dtype(qtype)
  assert q.scale.shape == ((64 // group_size) if group_size else 1, 48)
  step_IO = jnp.repeat(q.scale, 64 // q.scale.shape[0], axis=0)
  err_IO = jnp.abs(qwix.dequantize(q) - w_IO)
  assert bool(jnp.all(err_IO <= 0.5 * step_IO * (1 + 1e-5) + 1e-7))
  assert float(err_IO.max()) > 0.25 * float(step_IO.min())  # the bound is not vacuous


def test_quantized_matmul_equals_dequantized_float_matmul():
  x_BI = jax.random.normal(jax.random.key(1), (8, 64))
  w_IO = jax.random.normal(jax.random.key(2), (64, 32))
  for qtype in ('int8', 'int4'):
    q = qwix.quantize(w_IO, qtype, channelwise_axes=[1], tiled_axes={0: 16})
    y = qwix.einsum('bi,io->bo', x_BI, q)
    np.testing.assert_allclose(y, x_BI @ qwix.dequantize(q), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------- config


def _q(**fields):
  c = tiny_config()
  for k, v in fields.items():
    c.model.quantization[k] = v
  return c


@pytest.mark.parametrize('fields,field', [
    ({'mode': 'fake'}, 'mode'),
    ({'mode': 'qat', 'weight_qtype': 'int3'}, 'weight_qtype'),
    ({'mode': 'qat', 'layers': 'attention,conv'}, 'layers'),
    ({'mode': 'qat', 'group_size': 24}, 'group_size'),
    ({'mode': 'qat', 'weight_qtype': 'e4m3', 'symmetric': False}, 'symmetric'),
    ({'mode': 'ptq', 'layers': 'head'}, 'layers'),  # tied embeddings
])
def test_bad_quantization_config_is_one_line(fields, field):
  with pytest.raises(ConfigError) as e:
    config_lib.finalize(_q(**fields))
  assert e.value.field == f'model.quantization.{field}' and '\n' not in str(e.value)


# ------------------------------------------------------------------------- PTQ command


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny decoder trained a few steps, with a tokenizer: (workdir, dataset)."""
  from research.data import pipeline, tokenizer as tokenizer_lib
  path = str(tmp_path_factory.mktemp('float'))
  tok = tokenizer_lib.train_tokenizer([TEXT], 80, os.path.join(path, pipeline.WORKDIR_TOKENIZER),
                                      num_sentinels=0, byte_fallback=False)
  config = tiny_config(**{'data.vocab_size': tok.vocab_size, 'train.steps': 12,
                          'train.batch_size': 8, 'train.eval_every': 12,
                          'train.checkpoint_every': 12, 'train.log_every': 12,
                          'model.tie_embeddings': False})
  dataset = PatternDataset(vocab_size=tok.vocab_size)
  trainer.train(config, path, dataset=dataset, devices=ONE_DEVICE())
  return path, dataset


@pytest.mark.parametrize('bits,group_size,asymmetric', [(8, 0, False), (4, 16, True)])
def test_quantize_end_to_end(trained, tmp_path, bits, group_size, asymmetric):
  workdir, dataset = trained
  out = str(tmp_path / 'q')
  argv = ['quantize', f'--workdir={workdir}', f'--out={out}', f'--bits={bits}',
          f'--group_size={group_size}', '--layers=attention,mlp,head'] + (
              ['--asymmetric'] if asymmetric else [])
  assert quantize.main(argv) == 0
  lm, lmq = research.load(workdir), research.load(out)
  q = lmq.config.model.quantization
  assert (q.mode, q.weight_qtype, q.group_size, q.symmetric) == (
      'ptq', f'int{bits}', group_size, not asymmetric)
  # The checkpoint holds integer values and scales, not float copies, and no optimizer state.
  mlp = lmq.params['stack']['layer_0']['mlp']['w_in'].array
  assert mlp.qvalue.dtype == jnp.dtype(f'int{bits}') and (mlp.zero_point is not None) == asymmetric
  assert lmq.params['unembed']['kernel'].array.qvalue.dtype == jnp.dtype(f'int{bits}')
  float_param_bytes = quantize.tree_bytes(lm.params)
  # int8 is a quarter of float32 and int4 an eighth (plus float scales and the float embedding
  # table), as restored from the checkpoint. (Bytes on disk are not compared: Orbax's files and
  # metadata for a model this small vary with the environment, 0.5-1.0x of float here.)
  assert quantize.tree_bytes(lmq.params) < float_param_bytes * (0.32 if bits == 8 else 0.25)
  # The quantized model scores like the float one (and is not the float one).
  tokens_BT = dataset.eval_batch(0, 8, 32)
  nll, nll_q = (-float(np.mean(m.score(tokens_BT)[:, 1:])) for m in (lm, lmq))
  assert nll_q != nll and abs(nll_q - nll) < (0.02 if bits == 8 else 0.1)
  assert isinstance(lmq.generate('ROMEO:', max_new_tokens=4), str)
  if bits == 8:  # research.sample and research.evaluate read it like any workdir
    from research.evaluation import perplexity
    from research import sample
    text = sample.sample(out, 'ROMEO:', max_new_tokens=4, temperature=0.0, top_k=0, top_p=1.0,
                         num_samples=1, seed=0)
    assert len(text) == 1 and text[0].startswith('ROMEO:')
    corpus = tmp_path / 'corpus'
    corpus.mkdir()
    (corpus / 'a.txt').write_text(TEXT * 5)
    metrics = perplexity.perplexity(out, source=f'text:{corpus}/*.txt', split='train',
                                    batches=1, overrides=[('data.cache_dir', str(tmp_path))])
    assert np.isfinite(metrics['perplexity'])


@pytest.mark.parametrize('args,flag', [
    (['--workdir=/nonexistent/run'], '/nonexistent/run'),
    (['--bits=3'], '--bits=3'),
    (['--group_size=24'], '--group_size=24'),
    (['--layers=attention,conv'], '--layers='),
    (['--out=EXISTING'], '--out='),
    (['--bitz=8'], '--bitz'),
])
def test_bad_input_exits_nonzero_with_one_line(trained, tmp_path, capsys, args, flag):
  workdir, _ = trained
  existing = tmp_path / 'existing'
  existing.mkdir()
  base = {'--workdir': f'--workdir={workdir}', '--out': f'--out={tmp_path / "new"}'}
  for arg in args:
    base[arg.split('=')[0]] = arg.replace('EXISTING', str(existing))
  assert quantize.main(['quantize', *base.values()]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith('error: ') and flag in err and '\n' not in err, err
  assert not os.path.exists(tmp_path / 'new')


# ------------------------------------------------------------------------- QAT


class _Outer(nn.Module):
  @nn.compact
  def __call__(self, x_BI):
    return _Dense(name='mlp')(x_BI)


class _Dense(nn.Module):
  @nn.compact
  def __call__(self, x_BI):
    w_IO = self.param('w', nn.initializers.normal(1.0), (64, 32))
    return jnp.einsum('bi,io->bo', x_BI, w_IO)


@pytest.mark.parametrize('qtype', ['int8', 'float8_e4m3fn'])
def test_qat_forward_is_quantized_and_gradient_straight_through(qtype):
  q = ml_collections.ConfigDict(dict(mode='qat', weight_qtype=qtype, act_qtype='', bwd_qtype='',
                                     layers='mlp', group_size=0, symmetric=True))
  model = quantization.build(_Outer(), ml_collections.ConfigDict({'quantization': q}))
  x_BI = jax.random.normal(jax.random.key(0), (4, 64))
  g_BO = jax.random.normal(jax.random.key(1), (4, 32))
  params = _Outer().init(jax.random.key(2), x_BI)['params']
  w_IO = params['mlp']['w']
  y_BO = model.apply({'params': params}, x_BI)
  wq_IO = qwix.dequantize(qwix.quantize(w_IO, qtype, channelwise_axes=[1]))
  assert not np.allclose(y_BO, x_BI @ w_IO, rtol=1e-6, atol=1e-6)  # quantized, not float
  np.testing.assert_allclose(y_BO, x_BI @ wq_IO, rtol=1e-5, atol=1e-5)
  grad_IO = jax.grad(lambda p: jnp.sum(model.apply({'params': p}, x_BI) * g_BO))(params)
  # Straight through: d(quantize)/dw = 1, so the gradient is the float layer's x^T g.
  np.testing.assert_allclose(grad_IO['mlp']['w'], x_BI.T @ g_BO, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('qtype', ['int8', 'e4m3'])
def test_qat_tiny_model_trains(tmp_path, qtype):
  config = tiny_config(**{'model.quantization.mode': 'qat', 'model.quantization.weight_qtype':
                          qtype, 'model.quantization.act_qtype': qtype,
                          'model.num_layers': 1, 'model.d_model': 32, 'model.num_heads': 2,
                          'train.steps': 15, 'train.batch_size': 8, 'train.eval_every': 15,
                          'train.checkpoint_every': 15, 'train.log_every': 1,
                          'train.eval_batches': 1})
  run = trainer.build_run(config, devices=ONE_DEVICE())
  assert type(run.model).__mro__[1].__name__ == type(run.model).__name__  # Qwix's subclass
  losses = []
  trainer.train(config, str(tmp_path), dataset=PatternDataset(),
                devices=ONE_DEVICE(),
                hooks=[lambda step, state, metrics: metrics and losses.append(
                    float(metrics['train/loss']))])
  assert len(losses) >= 12 and np.mean(losses[-3:]) < losses[0] - 0.3, losses
