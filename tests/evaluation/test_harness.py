"""lm-evaluation-harness on lmforge runs (research/evaluation/harness.py).

Local tasks (YAMLs over JSON files written here, the "key value" table the shared decoder run
learnt) go through `lm_eval.simple_evaluate` and must give lmforge's own numbers, computed
independently: log-probabilities from `lm.score` on each text's own token row (not the
harness's batches, buckets or shared rows), greedy checks from the logits, generations from
`lm.generate` cut at the stop string. The harness scores on all 8 devices, the command on one.
"""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys

import lm_eval
import numpy as np
import pytest
from lm_eval.tasks import TaskManager

import research
from research.errors import ConfigError, UserError
from research.evaluation import harness
from tests import helpers
from tests.evaluation.conftest import KEYS, TABLE, VALUES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = ('lmforge_mc', 'lmforge_ll', 'lmforge_rolling', 'lmforge_gen')
GEN_TOKENS = 6
ROW = 72  # reference rows are right-padded to this many tokens (a decoder ignores what follows)


def _choices(i: int) -> tuple[list[str], int]:
  """Four values for key i, the true one at position i % 4."""
  others = [v for v in VALUES if v != TABLE[KEYS[i]]][i:i + 3]
  gold = i % 4
  return others[:gold] + [TABLE[KEYS[i]]] + others[gold:], gold


def _documents() -> dict[str, list[dict]]:
  lines = [f'{k} {TABLE[k]}' for k in KEYS] * 4
  return {
      'mc': [dict(zip(('key', 'choices', 'gold'), (KEYS[i], *_choices(i)))) for i in range(8)],
      # Every other value is wrong, so that greedy checks see both answers; the last context
      # is longer than the model's (its first tokens are cut).
      'll': [{'key': k, 'value': TABLE[k] if i % 2 == 0 else VALUES[(i + 5) % 16]}
             for i, k in enumerate(KEYS[:8])] + [
                 {'key': '\n'.join(lines[:30] + ['moss']), 'value': TABLE['moss']}],
      # One window, two and a bit, several: documents of about 10, 100 and 200 tokens.
      'rolling': [{'text': '\n'.join(lines[:n])} for n in (3, 28, 60)],
      'gen': [{'key': k, 'value': TABLE[k]} for k in KEYS[8:14]],
  }


def _yaml(name: str, data: str, cache: str, body: str, path: str = 'json') -> str:
  files = f"{{data_files: {{test: '{data}'}}, cache_dir: '{cache}'}}" if path == 'json' else (
      f"{{cache_dir: '{cache}'}}")
  return (f'task: {name}\ndataset_path: {path}\ndataset_kwargs: {files}\ntest_split: test\n'
          + body)


BODIES = {
    'mc': ('output_type: multiple_choice\ndoc_to_text: key\ndoc_to_choice: choices\n'
           'doc_to_target: gold\nmetric_list: [{metric: acc}]\n'),
    'll': ('output_type: loglikelihood\ndoc_to_text: key\ndoc_to_target: " {{value}}"\n'
           'metric_list: [{metric: perplexity}, {metric: acc}]\n'),
    'rolling': ('output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: text\n'
                'metric_list: [{metric: word_perplexity}, {metric: bits_per_byte}]\n'),
    'gen': ('output_type: generate_until\ndoc_to_text: key\ndoc_to_target: " {{value}}"\n'
            f'generation_kwargs: {{until: ["\\n"], max_gen_toks: {GEN_TOKENS}, do_sample: false}}\n'
            'metric_list: [{metric: exact_match}]\n'),
}


@pytest.fixture(scope='module')
def task_dir(tmp_path_factory) -> str:
  """Task YAMLs: the four good ones, one whose data lives on the Hub, one whose file is
  missing, two without examples (an empty data file, a process_docs that drops every one)."""
  root = tmp_path_factory.mktemp('lm_eval_tasks')
  cache = str(tmp_path_factory.mktemp('datasets_cache'))
  for kind, docs in _documents().items():
    data = root / f'{kind}.jsonl'
    data.write_text(''.join(json.dumps(d) + '\n' for d in docs))
    (root / f'lmforge_{kind}.yaml').write_text(
        _yaml(f'lmforge_{kind}', str(data), cache, BODIES[kind]))
  (root / 'hub.yaml').write_text(
      _yaml('lmforge_hub', '', cache, BODIES['ll'], path='lmforge-tests/absent'))
  (root / 'utils.py').write_text('def drop_all(docs):\n  return docs.filter(lambda d: False)\n')
  drop_all = 'process_docs: !function utils.drop_all\n'
  (root / 'filtered.yaml').write_text(
      _yaml('lmforge_filtered', str(root / 'mc.jsonl'), cache, BODIES['mc'] + drop_all))
  (root / 'missing.yaml').write_text(
      _yaml('lmforge_missing', str(root / 'missing.jsonl'), cache, BODIES['ll']))
  (root / 'empty.jsonl').write_text('')
  (root / 'empty.yaml').write_text(_yaml('lmforge_empty', str(root / 'empty.jsonl'), cache,
                                         BODIES['mc']))
  return str(root)


@pytest.fixture(scope='module')
def lm(decoder_workdir):
  return research.load(decoder_workdir)


@pytest.fixture(scope='module')
def results(lm, task_dir):
  """The harness's results of the four tasks, with every sample."""
  manager = TaskManager(include_path=task_dir, include_defaults=False)
  return lm_eval.simple_evaluate(model=research.lm_eval_model(lm), tasks=list(TASKS),
                                 task_manager=manager, log_samples=True, bootstrap_iters=0)


def _samples(results, task: str) -> list[dict]:
  return sorted(results['samples'][task], key=lambda s: s['doc_id'])


def _reference(lm, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
  """lm.score's log-probabilities and whether each token is the argmax of the logits before it,
  for rows right-padded to ROW tokens."""
  tokens_BT = np.zeros((len(rows), ROW), np.int32)
  for b, row in enumerate(rows):
    tokens_BT[b, :len(row)] = row
  logp_BT = np.asarray(lm.score(tokens_BT))
  argmax_BT = np.asarray(lm(tokens_BT)).argmax(-1)
  greedy_BT = np.zeros_like(logp_BT, bool)
  greedy_BT[:, 1:] = argmax_BT[:, :-1] == tokens_BT[:, 1:]
  return logp_BT, greedy_BT


def _continuation_scores(lm, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
  """(sum of log p, all greedy) of each continuation after its context: the whole text's
  tokens beyond the context's own (the harness's convention), the model reading at most
  data.seq_len of them (the text's last data.seq_len + 1 tokens are scored)."""
  tok, rows, starts, keep = lm.tokenizer, [], [], lm.config.data.seq_len + 1
  for context, continuation in pairs:
    whole, head = tok.encode(context + continuation), tok.encode(context)
    assert whole[:len(head)] == head
    cut = max(0, len(whole) - keep)
    rows.append(whole[cut:])
    starts.append(len(head) - cut)
  logp_BT, greedy_BT = _reference(lm, rows)
  return (np.array([logp_BT[b, s:len(r)].sum() for b, (r, s) in enumerate(zip(rows, starts))]),
          np.array([greedy_BT[b, s:len(r)].all() for b, (r, s) in enumerate(zip(rows, starts))]))


def test_multiple_choice_log_probabilities_and_accuracy_are_lmforge_scores(lm, results):
  docs = _documents()['mc']
  pairs = [(d['key'], ' ' + c) for d in docs for c in d['choices']]
  want, _ = _continuation_scores(lm, pairs)
  got = [ll for s in _samples(results, 'lmforge_mc') for ll, _ in s['filtered_resps']]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  correct = want.reshape(len(docs), 4).argmax(-1) == [d['gold'] for d in docs]
  assert results['results']['lmforge_mc']['acc,none'] == pytest.approx(correct.mean())
  assert correct.mean() > 0.5  # the run learnt the table (chance: 0.25)


def test_loglikelihood_sums_and_greedy_flags_are_lmforge_scores(lm, results):
  docs = _documents()['ll']
  assert len(lm.tokenizer.encode(docs[-1]['key'])) > lm.config.data.seq_len
  want, greedy = _continuation_scores(lm, [(d['key'], ' ' + d['value']) for d in docs])
  got = [s['filtered_resps'][0] for s in _samples(results, 'lmforge_ll')]
  np.testing.assert_allclose([ll for ll, _ in got], want, rtol=1e-5, atol=1e-5)
  assert [g for _, g in got] == greedy.tolist()
  assert 0 < greedy.sum() < len(docs)  # both kinds of answer occur
  task = results['results']['lmforge_ll']
  assert task['acc,none'] == pytest.approx(greedy.mean())
  assert task['perplexity,none'] == pytest.approx(math.exp(-want.mean()), rel=1e-5)


def test_rolling_loglikelihood_sums_disjoint_windows_of_the_context(lm, results):
  """Tokens [0, L), [L, 2L), ... of a document are predicted by windows of at most L inputs:
  the first after the prefix token (eos), each later one after the token before it, the last
  one with as much context as fills its window (L = data.seq_len = 64)."""
  context, tok = lm.config.data.seq_len, lm.tokenizer
  texts = [d['text'] for d in _documents()['rolling']]
  rows, spans, owners = [], [], []
  for i, text in enumerate(texts):
    full = [tok.eos_id] + tok.encode(text)  # full[j + 1] is token j
    n = len(full) - 1
    for start in range(0, n, context):
      end = min(start + context, n)
      rows.append(full[max(0, end - context):end + 1])
      spans.append(end - start)
      owners.append(i)
  assert [owners.count(i) for i in range(3)] == [1, 2, 4]  # as the documents were made
  logp_BT, _ = _reference(lm, rows)
  want = np.zeros(len(texts))
  for b, (row, span, i) in enumerate(zip(rows, spans, owners)):
    want[i] += logp_BT[b, len(row) - span:len(row)].sum()
  got = [s['filtered_resps'][0] for s in _samples(results, 'lmforge_rolling')]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  bits = -want.sum() / sum(len(t.encode()) for t in texts) / math.log(2)
  assert results['results']['lmforge_rolling']['bits_per_byte,none'] == pytest.approx(bits,
                                                                                        rel=1e-5)


def test_generate_until_is_greedy_generation_cut_at_the_stop_string(lm, results):
  docs = _documents()['gen']
  ids = lm.generate([lm.tokenizer.encode(d['key']) for d in docs], max_new_tokens=GEN_TOKENS)
  want = [lm.tokenizer.decode(i).split('\n')[0] for i in ids]
  assert [s['filtered_resps'][0] for s in _samples(results, 'lmforge_gen')] == want
  correct = np.mean([w == ' ' + d['value'] for w, d in zip(want, docs)])
  assert results['results']['lmforge_gen']['exact_match,none'] == pytest.approx(correct)
  assert correct >= 0.5  # chance: 1/16


def test_registered_model_and_lm_eval_model_load_a_workdir(lm, decoder_workdir):
  model = lm_eval.api.registry.get_model('lmforge').create_from_arg_string(
      f'workdir={decoder_workdir},step={lm.step}', {'batch_size': 3, 'device': None})
  assert model.get_model_info() == {'workdir': decoder_workdir, 'step': lm.step,
                                    'family': 'decoder'}
  assert model.batch_size == 8  # 3 rows, rounded up to the 8 batch shards of the mesh
  assert model.max_length == lm.config.data.seq_len
  assert research.lm_eval_model(decoder_workdir).get_model_info()['step'] == lm.step


@pytest.mark.parametrize('tasks,message', [
    ('lmforge_mcq', "lm_eval task 'lmforge_mcq' is unknown to lm_eval 0.4.13: similar: "
                    'lmforge_mc'),
    ('lmforge_hub', "lm_eval task 'lmforge_hub': its data is not available on this machine "
                    "(Couldn't reach 'lmforge-tests/absent' on the Hub (OfflineModeIsEnabled)): "
                    'run on a machine that can fetch it (HF_HUB_OFFLINE=0), or pre-download it '
                    'there into HF_DATASETS_CACHE'),
    ('lmforge_missing', "lm_eval task 'lmforge_missing': its data was not found (Unable to find "),
    ('lmforge_empty', "lm_eval task 'lmforge_empty' has no examples to score: its evaluation"),
    ('lmforge_filtered', "lm_eval task 'lmforge_filtered' has no examples to score: its"),
    (' , ', 'no lm_eval tasks given: set --config.eval.lm_eval.tasks'),
])
def test_bad_tasks_are_one_line_user_errors(lm, task_dir, tasks, message):
  with pytest.raises(UserError) as e:
    harness.lm_eval_metrics(lm, tasks=tasks, include_path=task_dir)
  assert str(e.value).startswith(message) and '\n' not in str(e.value)


def test_unknown_task_says_how_to_list_tasks_and_add_local_ones(lm, task_dir):
  with pytest.raises(UserError, match=r'`lm-eval ls tasks --include_path=.*` lists them; tasks '
                                      r'of your own are YAML files in a directory given as '
                                      r'include_path \(--config.eval.lm_eval.include_path\)'):
    harness.lm_eval_metrics(lm, tasks='lmforge_mc,hellaswg', include_path=task_dir)


def test_bad_settings_and_harness_versions_are_user_errors(lm):
  with pytest.raises(ConfigError, match='eval.lm_eval.limit=-1'):
    harness.lm_eval_metrics(lm, tasks='hellaswag', limit=-1)
  with pytest.raises(ConfigError, match='eval.lm_eval.include_path=.*no such directory'):
    harness.lm_eval_metrics(lm, tasks='hellaswag', include_path='/no/such/tasks')
  harness.check_harness_version('0.4.13')
  for version in ('0.4.12', '0.5.0'):
    with pytest.raises(UserError, match=f'lm_eval=={version} is installed, but lmforge supports '
                                        r'lm_eval>=0.4.13,<0.5: pip install'):
      harness.check_harness_version(version)
  with pytest.raises(UserError, match='lm_eval .* is not installed'):
    harness.check_harness_version(None)


def test_lm_eval_task_reads_the_settings_of_a_loaded_model(lm, task_dir, results):
  config = copy.deepcopy(lm.config)
  config.eval.lm_eval.tasks, config.eval.lm_eval.limit = 'lmforge_mc', 3
  config.eval.lm_eval.include_path = task_dir
  metrics = harness.lm_eval_task(dataclasses.replace(lm, config=config))
  correct = [np.argmax([ll for ll, _ in s['filtered_resps']]) == s['doc']['gold']
             for s in _samples(results, 'lmforge_mc')[:3]]
  assert metrics['step'] == lm.step and metrics['lmforge_mc/sample_len'] == 3
  assert metrics['lmforge_mc/acc'] == pytest.approx(np.mean(correct))
  with pytest.raises(UserError, match='step and overrides choose what to load from a workdir'):
    harness.lm_eval_task(lm, step=lm.step)


def test_task_index_is_kept_until_a_task_yaml_changes(tmp_path):
  """Indexing the harness's task YAMLs takes seconds: harness.task_manager keeps one per
  include_path and state of the YAML files under it."""
  assert harness._fingerprint('') == ()  # the harness's own tasks alone
  (tmp_path / 'a.yaml').write_text('task: a\n')
  before = harness._fingerprint(str(tmp_path))
  assert [os.path.basename(f[0]) for f in before] == ['a.yaml']
  (tmp_path / 'data.jsonl').write_text('{}\n')  # data (and a datasets cache) do not count
  assert harness._fingerprint(str(tmp_path)) == before
  (tmp_path / 'a.yaml').write_text('task: another\n')
  assert harness._fingerprint(str(tmp_path)) != before


def test_evaluate_command_prints_the_metrics_and_writes_the_harness_json(decoder_workdir,
                                                                         task_dir, results,
                                                                         tmp_path):
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'research.evaluate', f'--workdir={decoder_workdir}', '--task=lm_eval',
       '--config.eval.lm_eval.tasks=lmforge_mc,lmforge_ll', '--config.eval.lm_eval.limit=4',
       f'--config.eval.lm_eval.include_path={task_dir}', '--config.eval.lm_eval.num_fewshot=0',
       f'--out={out}'], cwd=REPO, env=helpers.subprocess_env(1), capture_output=True, text=True,
      timeout=300)  # one CPU device, as on a laptop
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  # The first 4 examples of each task, scored as in-process on 8 devices.
  mc = [np.argmax([ll for ll, _ in s['filtered_resps']]) == s['doc']['gold']
        for s in _samples(results, 'lmforge_mc')[:4]]
  greedy = [s['filtered_resps'][0][1] for s in _samples(results, 'lmforge_ll')[:4]]
  assert line['task'] == 'lm_eval' and line['step'] == 80
  assert line['lmforge_mc/acc'] == pytest.approx(np.mean(mc))
  assert line['lmforge_ll/acc'] == pytest.approx(np.mean(greedy))
  assert line['lmforge_mc/sample_len'] == line['lmforge_ll/sample_len'] == 4
  saved = json.loads((out / 'lm_eval.json').read_text())
  assert saved['results']['lmforge_ll']['acc,none'] == line['lmforge_ll/acc']
  assert saved['config']['workdir'] == decoder_workdir and saved['n-samples']['lmforge_mc'] == {
      'original': 8, 'effective': 4}
