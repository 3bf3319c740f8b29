"""Each evaluation task end to end on tiny trained workdirs (tests/evaluation/conftest.py)."""

import json
import os

import jax
import numpy as np
import pytest

import research
from research.errors import UserError
from research.evaluation import few_shot, generate, generation, perplexity, validation
from research.inference import decoding
from tests.evaluation.conftest import KEYS, TABLE, VALUES, write_corpus, write_jsonl

# A table the runs never saw: every key paired with another key's value.
SHIFTED = {k: VALUES[(i + 1) % len(VALUES)] for i, k in enumerate(KEYS)}


def test_perplexity_of_the_own_source_is_the_validation_task(decoder_workdir):
  own = perplexity.perplexity(decoder_workdir)
  whole = validation.validation(decoder_workdir)
  for key in ('loss', 'perplexity', 'accuracy', 'tokens', 'bpb'):
    assert own[key] == pytest.approx(whole[key], rel=1e-6), key
  assert own['split'] == 'validation' and own['step'] == whole['step']
  assert own['perplexity'] == pytest.approx(np.exp(own['loss']), rel=1e-6)
  # A loaded model scores the same as its workdir.
  lm = research.load(decoder_workdir)
  assert perplexity.perplexity(lm)['loss'] == pytest.approx(own['loss'], rel=1e-6)


def test_perplexity_of_another_source_uses_the_run_tokenizer(decoder_workdir, tmp_path):
  own = perplexity.perplexity(decoder_workdir, split='train', batches=2)
  other = perplexity.perplexity(decoder_workdir, source=write_corpus(str(tmp_path), table=SHIFTED),
                                split='train', batches=2)
  assert other['source'].startswith('text:') and other['tokens'] == own['tokens']
  assert other['loss'] > own['loss'] + 0.5  # the values it learnt are now wrong
  with pytest.raises(UserError, match='fewer than one batch'):
    (tmp_path / 'tiny').mkdir()
    (tmp_path / 'tiny' / 'a.txt').write_text('amber -> red\n')
    perplexity.perplexity(decoder_workdir, source=f'text:{tmp_path}/tiny/*.txt', split='train')


def test_few_shot_accuracy_of_a_trained_model_beats_chance(decoder_workdir, table_jsonl,
                                                           tmp_path):
  out = str(tmp_path / 'out')
  result = few_shot.few_shot(decoder_workdir, data=table_jsonl, out=out)
  chance = 1 / len(VALUES)
  assert result['examples'] == len(TABLE) and result['k'] == 3
  assert result['accuracy'] >= 0.75 > 3 * chance, result
  # The same keys with targets the model never saw: the metric follows the targets.
  shifted = write_jsonl(str(tmp_path / 'shifted.jsonl'),
                        [{'input': k, 'target': v} for k, v in SHIFTED.items()])
  wrong = few_shot.few_shot(decoder_workdir, data=shifted, overrides=[('eval.k', '2')])
  assert wrong['k'] == 2 and wrong['accuracy'] <= 0.25
  rows = [json.loads(l) for l in open(os.path.join(out, 'few_shot_predictions.jsonl'))]
  assert json.load(open(os.path.join(out, 'few_shot.json')))['correct'] == result['correct']
  assert [r['line'] for r in rows] == list(range(1, len(TABLE) + 1))
  for row, (key, value) in zip(rows, TABLE.items()):
    assert row['prompt'].endswith(f'\n{key}') and row['prompt'].count('\n') == 3
    assert row['correct'] == (row['prediction'] == value)


def test_generation_metrics_and_predictions(decoder_workdir, tmp_path):
  rows = [{'input': k, 'reference': v} for k, v in TABLE.items()]
  rows[0] = {'input': rows[0]['input'], 'references': ['nothing like it', TABLE[KEYS[0]]]}
  data = write_jsonl(str(tmp_path / 'pairs.jsonl'), rows)
  out = str(tmp_path / 'out')
  result = generation.generation(decoder_workdir, data=data, out=out)
  assert result['examples'] == len(TABLE)
  assert result['chrf'] > 80 and result['rouge1'] > 80, result
  predictions = [json.loads(l) for l in open(os.path.join(out, 'generation_predictions.jsonl'))]
  assert predictions[0]['references'] == ['nothing like it', TABLE[KEYS[0]]]
  scores = generation.corpus_scores([p['prediction'] for p in predictions],
                                    [p['references'] for p in predictions])
  assert scores == {k: result[k] for k in scores}


def test_batched_greedy_matches_the_kv_cache_decoder(decoder_workdir):
  lm = research.load(decoder_workdir)
  tok = lm.tokenizer
  prompts = [tok.encode(p) for p in ('amber red\nbasil', 'moss', 'pine jet\njade moss\nfjord')]
  assert len({len(p) for p in prompts}) == 3  # rows are padded differently
  by_8 = generate.generate_decoder(lm, prompts, max_new_tokens=6, batch_size=8)
  by_2 = generate.generate_decoder(lm, prompts, max_new_tokens=6, batch_size=2)
  assert by_8 == by_2 and by_8.texts[0].startswith(' blue')
  # The most padded row against the KV-cache decoder, which needs no padding for one prompt.
  tokens_BN = decoding.generate(lm.model, lm.params, np.asarray([prompts[1]]),
                                jax.random.key(0), max_new_tokens=6, temperature=0.0,
                                eos_id=tok.eos_id, model_state=lm.model_state)
  ids = np.asarray(tokens_BN)[0].tolist()
  assert tok.decode(ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids) == by_8.texts[1]


def test_prompts_longer_than_the_context_name_the_line(decoder_workdir, tmp_path):
  long_input = ' '.join(KEYS * 4)  # more than data.seq_len=64 tokens
  data = write_jsonl(str(tmp_path / 'long.jsonl'), [{'input': 'amber', 'reference': 'red'},
                                                     {'input': long_input, 'reference': 'x'}])
  with pytest.raises(UserError, match=r'long.jsonl:2: the prompt has \d+ tokens, plus '
                     r'eval.max_new_tokens=6 exceeds the model context of 64 tokens'):
    generation.generation(decoder_workdir, data=data)


def test_encoder_decoder_generates_greedy_and_with_beams(encoder_decoder_workdir, table_jsonl,
                                                         tmp_path):
  data = write_jsonl(str(tmp_path / 'pairs.jsonl'),
                     [{'input': k, 'reference': v} for k, v in TABLE.items()])
  out = str(tmp_path / 'out')
  greedy = generation.generation(encoder_decoder_workdir, data=data, out=out)
  beams = generation.generation(encoder_decoder_workdir, data=data,
                                overrides=[('eval.beam_size', '2')])
  for result in (greedy, beams):
    assert result['examples'] == len(TABLE) and result['step'] == 0
    assert all(0 <= result[k] <= 100 for k in generation.ROUGE_TYPES + ('bleu', 'chrf'))
  assert len(open(os.path.join(out, 'generation_predictions.jsonl')).readlines()) == len(TABLE)
  shots = few_shot.few_shot(encoder_decoder_workdir, data=table_jsonl)
  assert shots['examples'] == len(TABLE) and 0 <= shots['accuracy'] <= 1
