"""Export to Hugging Face: lmforge -> HF -> lmforge is bit-identical (GPT-2, BERT, T5, Llama);
transformers loads every export with no missing or unexpected keys and gives lmforge's logits;
a workdir exports sharded with its tokenizer files; the family is picked by architecture; and
the import errors are one line naming the file, the tensor and the fix."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from research import convert, models
from research.errors import UserError
from research.models import hf
from tests import helpers

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

pytestmark = pytest.mark.hf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VOCAB = 96
NO_IDS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
REFERENCES = {
    'gpt2': lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4, **NO_IDS)),
    'bert': lambda: transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=32, **NO_IDS)),
    't5': lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2,
        num_decoder_layers=1, feed_forward_proj='gated-gelu', tie_word_embeddings=False,
        relative_attention_num_buckets=8, relative_attention_max_distance=12)),
    't5_tied': lambda: transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=1,
        feed_forward_proj='relu', relative_attention_num_buckets=8,
        relative_attention_max_distance=12)),
    'llama': lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False, **NO_IDS)),
}
LMFORGE_LOGITS = ('gpt2', 'bert', 't5', 'llama')  # t5_tied: T5 1.0, as tests/hf/test_t5_parity
TOKENS_BT = np.random.default_rng(0).integers(1, VOCAB, (2, 16))


def _perturbed(model):
  """Every weight random and away from HF's init (biases 0, norms 1), so each one counts."""
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """name -> the save_pretrained directory of a random reference model."""
  torch.manual_seed(0)
  out = {}
  for name, build in REFERENCES.items():
    model = build()
    if name == 't5':  # Transformers 5 ties the head at construction: give v1.1 its own
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
    out[name] = str(tmp_path_factory.mktemp(name))
    _perturbed(model).save_pretrained(out[name])
  return out


def _logits(family: str, model, params=None):
  """Logits of `TOKENS_BT`: lmforge's with `params`, else the torch model's."""
  decoder_inputs = np.concatenate([np.zeros((2, 1), np.int64), TOKENS_BT[:, :-1]], axis=1)
  family = family.split('_')[0]
  if params is None:
    args = dict(input_ids=torch.tensor(TOKENS_BT))
    if family == 't5':
      args['decoder_input_ids'] = torch.tensor(decoder_inputs)
    with torch.no_grad():
      return model(**args).logits.numpy()
  args = (TOKENS_BT, decoder_inputs) if family == 't5' else (TOKENS_BT,)
  return np.asarray(jax.jit(model.apply)({'params': params}, *args))


def _load_export(path: str, architecture: str):
  """The exported model through transformers, checked to have every key and nothing else."""
  cls = getattr(transformers, architecture)
  model, info = cls.from_pretrained(path, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'], info
  return model.eval()


def _assert_trees_equal(a, b):
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(b)}
  assert flat_a.keys() == flat_b.keys()
  for key, value in flat_a.items():
    assert np.array_equal(np.asarray(value), np.asarray(flat_b[key])), key


def _round_trip(name, source_dir, out_dir, params=None, config=None):
  """Exported params reload bit-identically; transformers' logits are lmforge's (for names
  that `test_hf_parity`-style checks cover elsewhere, the source model's: one compile less)."""
  if params is None:
    config, params = hf.convert(source_dir)
  config.model.dtype = 'float32'
  architecture = hf.export_family(config).architecture
  exported = _load_export(out_dir, architecture)
  if name in LMFORGE_LOGITS:
    expected = _logits(name, models.build_model(config), params)
  else:
    expected = _logits(name, getattr(transformers, architecture).from_pretrained(source_dir))
  np.testing.assert_allclose(_logits(name, exported), expected, atol=1e-4, rtol=1e-4)
  _assert_trees_equal(hf.convert(out_dir)[1], params)
  return architecture


@pytest.mark.parametrize('name,architecture', [
    ('gpt2', 'GPT2LMHeadModel'), ('bert', 'BertForMaskedLM'),
    ('t5', 'T5ForConditionalGeneration'), ('t5_tied', 'T5ForConditionalGeneration')])
def test_export_round_trip(name, architecture, saved, tmp_path):
  config, params = hf.convert(saved[name])
  assert config.model.tie_embeddings == (name != 't5')
  summary = convert.export_params(config, params, str(tmp_path / 'out'))
  assert summary['files'] == ['model.safetensors'] and summary['architecture'] == architecture
  assert _round_trip(name, saved[name], str(tmp_path / 'out'), params, config) == architecture


def _save_word_level_tokenizer(directory: str) -> None:
  """A word-level tokenizer of 91 ids (the model has 96), saved as transformers saves one."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  vocab = {'<unk>': 0, '<s>': 1, '</s>': 2, **{f'w{i}': i + 3 for i in range(88)}}
  tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='<unk>'))
  tk.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token='<s>', eos_token='</s>',
                                       unk_token='<unk>').save_pretrained(directory)


def test_workdir_exports_sharded_with_its_tokenizer(saved, tmp_path):
  """import_hf (the tokenizer comes along) -> workdir -> the --to=hf command
  (LlamaForCausalLM, several shards, an index, the tokenizer and its ids in config.json)."""
  hf_in, workdir, out = str(tmp_path / 'in'), str(tmp_path / 'w'), str(tmp_path / 'out')
  shutil.copytree(saved['llama'], hf_in)
  _save_word_level_tokenizer(hf_in)
  summary = convert.import_hf(hf_in, workdir)
  assert summary['family'] == 'decoder' and 'tokenizer.json' in summary['tokenizer']
  result = subprocess.run([sys.executable, '-m', 'research.convert', '--to=hf',
                           f'--workdir={workdir}', f'--hf_dir={out}', '--max_shard_size=8KB'],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=helpers.subprocess_env())
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.splitlines()[-1])
  assert summary['architecture'] == 'LlamaForCausalLM'
  assert 'tokenizer.json' in summary['tokenizer']
  assert 'model.safetensors.index.json' in summary['files'] and len(summary['files']) > 3
  with open(os.path.join(out, 'config.json')) as f:
    written = json.load(f)
  assert (written['model_type'], written['dtype'], written['torch_dtype']) == (
      'llama', 'float32', 'float32')
  assert (written['bos_token_id'], written['eos_token_id']) == (1, 2)
  reference = transformers.AutoTokenizer.from_pretrained(hf_in)
  exported = transformers.AutoTokenizer.from_pretrained(out)
  text = 'w1 w7 w80 nonsense w3'
  assert exported(text).input_ids == reference(text).input_ids == [4, 10, 83, 0, 6]
  _round_trip('llama', saved['llama'], out)
  with pytest.raises(UserError, match='is not empty'):
    convert.export_hf(workdir, out)


def test_export_picks_the_family_by_architecture():
  sliding = helpers.tiny_config(**{'model.attention.pattern': 'sliding',
                                   'model.attention.window': 8})
  assert hf.export_family(sliding).model_type == 'mistral'
  assert hf.export_family(helpers.tiny_config()).model_type == 'llama'
  mixed = helpers.tiny_config(**{'model.norm': 'layernorm', 'model.attention.pattern':
                                 'sliding,full', 'model.attention.window': 8})
  with pytest.raises(UserError) as e:
    hf.export_family(mixed)
  message = str(e.value)
  assert '\n' not in message
  for part in ("gpt2: model.position='rope' (needs 'learned')",
               "llama: model.norm='layernorm' (needs 'rmsnorm')",
               "model.attention.pattern='sliding,full' (needs 'sliding' on every layer)"):
    assert part in message


# ------------------------------------------------------------------------------------------------
# Import errors: one line naming the file, the tensor and the fix.


def _copy(source: str, dest) -> str:
  shutil.copytree(source, dest)
  return str(dest)


def _edit_config(path: str, **fields) -> None:
  with open(os.path.join(path, 'config.json')) as f:
    config = json.load(f)
  config.update(fields)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)


def test_unsupported_model_type_exits_2_with_one_line(saved, tmp_path):
  path = _copy(saved['gpt2'], tmp_path / 'gptj')
  _edit_config(path, model_type='gptj')
  result = subprocess.run([sys.executable, '-m', 'research.convert', '--from=hf',
                           f'--hf_dir={path}', f'--workdir={tmp_path / "w"}'], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=helpers.subprocess_env())
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(lines) == 1 and 'Traceback' not in result.stderr
  assert "model_type 'gptj' is not supported" in lines[0] and "'llama'" in lines[0]
  assert 'config.json' in lines[0]


def test_missing_shard(saved, tmp_path):
  transformers.LlamaForCausalLM.from_pretrained(saved['llama']).save_pretrained(
      tmp_path, max_shard_size='8KB')
  with open(tmp_path / 'model.safetensors.index.json') as f:
    shard = sorted(set(json.load(f)['weight_map'].values()))[1]
  os.remove(tmp_path / shard)
  with pytest.raises(UserError, match=rf'model\.safetensors\.index\.json puts tensor \S+ in '
                     rf'{shard}, which is not in .*copy every shard'):
    hf.convert(str(tmp_path))


def test_unused_tensor(saved, tmp_path):
  path = _copy(saved['llama'], tmp_path / 'extra')
  weights = load_file(os.path.join(path, 'model.safetensors'))
  weights['model.layers.0.mlp.extra_proj.weight'] = np.zeros((4, 4), np.float32)
  save_file(weights, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
  with pytest.raises(UserError, match=r"model\.safetensors: tensor model\.layers\.0\.mlp\."
                     r"extra_proj\.weight is not used by lmforge's llama mapping"):
    hf.convert(path)


def test_shape_mismatch(saved, tmp_path):
  path = _copy(saved['llama'], tmp_path / 'wide')
  _edit_config(path, intermediate_size=40)
  with pytest.raises(UserError, match=r'model\.safetensors: tensor model\.layers\.0\.mlp\.'
                     r'gate_proj\.weight has shape \(48, 32\), expected \(40, 32\)'):
    hf.convert(path)


def test_unsupported_hf_options(saved, tmp_path):
  path = _copy(saved['llama'], tmp_path / 'scaled')
  _edit_config(path, rope_parameters={'rope_type': 'llama3', 'rope_theta': 1e4, 'factor': 8.0})
  with pytest.raises(UserError, match="rope_type='llama3'"):
    hf.convert(path)
