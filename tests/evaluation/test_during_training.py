"""Evaluation tasks during training (research/evaluation/during_training.py): the decoder run of
tests/evaluation/conftest.py evaluates perplexity and few-shot accuracy at steps 40 and 80."""

import json
import os

import pytest

from research import config_lib
from research.errors import ConfigError
from research.evaluation import during_training, few_shot, harness, perplexity
from tests.evaluation.conftest import COMPILES, DURING_TRAINING_EVERY, LM_EVAL_TASK


def test_entries_parse_with_their_arguments():
  entries = during_training.parse(
      'validation,perplexity:text:notes/*.txt,few_shot:a.jsonl,perplexity,generation:b.jsonl,'
      'lm_eval:hellaswag,arc_easy')
  assert [(e.name, e.label, e.options) for e in entries] == [
      ('validation', 'validation', {}),
      ('perplexity', 'perplexity', {'source': 'text:notes/*.txt'}),
      ('few_shot', 'few_shot', {'data': 'a.jsonl'}),
      ('perplexity', 'perplexity_2', {}),
      ('generation', 'generation', {'data': 'b.jsonl'}),
      ('lm_eval', 'lm_eval', {'tasks': 'hellaswag,arc_easy'})]
  assert during_training.parse('') == []
  # A comma that is not followed by a task name continues the ARG before it.
  assert during_training.parse('few_shot:a,b.jsonl')[0].options == {'data': 'a,b.jsonl'}


@pytest.mark.parametrize('text, message', [
    ('hellaswag', "'hellaswag' is not an evaluation task"),
    ('validation:x', 'validation takes no argument'),
    ('few_shot', 'few_shot needs its data'),
])
def test_bad_entries_name_the_field_and_the_fix(text, message):
  with pytest.raises(ConfigError, match=message) as e:
    during_training.parse(text)
  assert 'eval.during_training' in str(e.value)


def test_generating_tasks_need_a_run_that_generates():
  config = config_lib.base_config()
  config.model.family = 'encoder'
  config.eval.during_training = 'few_shot:a.jsonl'
  with pytest.raises(ConfigError, match='an encoder run does not'):
    during_training.check(config)


def _rows(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_tasks_are_logged_during_training_and_equal_the_tasks_run_after(decoder_workdir,
                                                                        table_jsonl):
  rows = {r['step']: r for r in _rows(decoder_workdir) if 'eval/few_shot/accuracy' in r}
  assert sorted(rows) == [DURING_TRAINING_EVERY, 2 * DURING_TRAINING_EVERY]
  for row in rows.values():
    for key in ('eval/perplexity/loss', 'eval/perplexity/bpb', 'eval/perplexity/tokens',
                'eval/few_shot/accuracy', 'eval/few_shot/examples', 'eval/loss',
                f'eval/lm_eval/{LM_EVAL_TASK}/acc', f'eval/lm_eval/{LM_EVAL_TASK}/sample_len'):
      assert key in row, key
  # The model learns the table between the two evaluations.
  first, last = rows[DURING_TRAINING_EVERY], rows[2 * DURING_TRAINING_EVERY]
  assert last['eval/perplexity/loss'] < first['eval/perplexity/loss']
  # At the last step the logged numbers are those of the tasks on the saved checkpoint (restored
  # 8-way sharded; trained on one device).
  after = perplexity.perplexity(decoder_workdir)
  assert last['eval/perplexity/loss'] == pytest.approx(after['loss'], rel=1e-5)
  assert last['eval/perplexity/bpb'] == pytest.approx(after['bpb'], rel=1e-5)
  assert last['eval/perplexity/tokens'] == after['tokens']
  assert last['eval/few_shot/accuracy'] == few_shot.few_shot(decoder_workdir,
                                                             data=table_jsonl)['accuracy']
  harness_after = harness.lm_eval_task(decoder_workdir, tasks=LM_EVAL_TASK)
  assert last[f'eval/lm_eval/{LM_EVAL_TASK}/acc'] == harness_after[f'{LM_EVAL_TASK}/acc']
  assert last[f'eval/lm_eval/{LM_EVAL_TASK}/sample_len'] == 8


def test_tasks_compile_once_for_the_whole_run(decoder_workdir):
  """Between the hook calls after steps 40 and 80, the run trained 40 steps and evaluated
  everything again: validation, perplexity, few-shot generation and the harness task. Nothing
  compiled."""
  del decoder_workdir
  at = COMPILES.at_step
  assert at[DURING_TRAINING_EVERY] > at[1] > 0  # the step, then the evaluations, compiled
  assert at[2 * DURING_TRAINING_EVERY] == at[DURING_TRAINING_EVERY]
