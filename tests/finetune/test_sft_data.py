"""SFT and preference data: response-only weights, packing, the chat template, bad rows
counted, and a batch order that is a pure function of (seed, step)."""

import numpy as np
import pytest

from research.data import sft
from research.errors import ConfigError, UserError
from research.data import tokenizer as tokenizer_lib
from tests.finetune.conftest import sft_config, source_config, write_jsonl


class CharTokenizer:
  """One id per character (ord - 90), eos 1, pad 0: easy to read in assertions."""
  pad_id, eos_id = 0, 1

  def encode(self, text):
    return [ord(ch) - 90 for ch in text]


def test_decoder_rows_weight_only_the_response_and_its_eos():
  tok = CharTokenizer()
  example = sft.encode_pieces([('ab', False), ('cd', True)], tok)
  assert example == ([7, 8, 9, 10, 1], [0, 0, 1, 1, 1])
  rows = sft.decoder_rows([example], 6, pack=False, pad_id=0)
  np.testing.assert_array_equal(rows['inputs'][0], [7, 8, 9, 10, 1, 0])
  np.testing.assert_array_equal(rows['targets'][0], [8, 9, 10, 1, 0, 0])
  # Targets c, d and eos are weighted; b (prompt) and the padding are not.
  np.testing.assert_array_equal(rows['weights'][0], [0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(rows['segment_ids'][0], [1, 1, 1, 1, 1, 0])


def test_packing_keeps_examples_apart():
  tok = CharTokenizer()
  a = sft.encode_pieces([('ab', False), ('c', True)], tok)  # 4 tokens
  b = sft.encode_pieces([('d', False), ('ef', True)], tok)  # 4 tokens
  rows = sft.decoder_rows([a, b], 8, pack=True, pad_id=0)
  assert rows['inputs'].shape == (1, 8)
  np.testing.assert_array_equal(rows['segment_ids'][0], [1, 1, 1, 1, 2, 2, 2, 2])
  np.testing.assert_array_equal(rows['positions'][0], [0, 1, 2, 3, 0, 1, 2, 3])
  # a's eos -> b's first token is never a target; b's response e, f, eos are (b's prompt d
  # is only an input).
  np.testing.assert_array_equal(rows['weights'][0], [0, 1, 1, 0, 1, 1, 1, 0])


def test_chat_template_weights_assistant_turns_only():
  tok = CharTokenizer()
  pieces = sft.pieces_of({'messages': [{'role': 'user', 'content': 'hi'},
                                       {'role': 'assistant', 'content': 'yo'},
                                       {'role': 'user', 'content': 'x'},
                                       {'role': 'assistant', 'content': 'z'}]})
  text = ''.join(t for t, _ in pieces)
  assert text == '### User:\nhi\n### Assistant:\nyo### User:\nx\n### Assistant:\nz'
  ids, flags = sft.encode_pieces(pieces, tok)
  weighted = [i for i, f in zip(ids, flags) if f]
  assert weighted == tok.encode('yo') + [1] + tok.encode('z') + [1]
  assert isinstance(sft.pieces_of({'messages': [{'role': 'user', 'content': 'q'}]}), str)


def test_encoder_decoder_rows_split_prompt_and_response():
  tok = CharTokenizer()
  example = sft.encode_pieces([('ab', False), ('cd', True)], tok)
  rows = sft.encoder_decoder_rows([example], 5, pad_id=0, eos_id=1)
  np.testing.assert_array_equal(rows['encoder_inputs'][0], [7, 8, 1, 0, 0])
  np.testing.assert_array_equal(rows['targets'][0], [9, 10, 1, 0, 0])
  np.testing.assert_array_equal(rows['decoder_inputs'][0], [0, 9, 10, 1, 0])
  np.testing.assert_array_equal(rows['weights'][0], [1, 1, 1, 0, 0])


def test_bad_and_too_long_rows_are_counted(tmp_path, tokenizer_path, decoder_source):
  rows = [{'prompt': 'copy ab =', 'response': ' ab'}] * 10
  rows.append({'prompt': 'copy ' + 'abcd ' * 40, 'response': ' x'})  # longer than a row
  rows.append({'prompt': 'no response'})
  train = write_jsonl(tmp_path / 't.jsonl', rows, extra_lines=['{broken', '[1]'])
  config = sft_config(decoder_source[0], train, '', **{'finetune.eval_fraction': 0.2})
  data = sft.load_sft(config, tokenizer_lib.load_tokenizer(tokenizer_path))
  s = data.stats['train']
  assert (s.lines, s.bad_lines, s.too_long, s.examples) == (14, 3, 1, 10)
  assert 't.jsonl:13: not JSON' in s.first_problem  # the first problem, with its place
  assert len(data.eval_rows['inputs']) >= 1
  empty = write_jsonl(tmp_path / 'e.jsonl', [], extra_lines=['nope'])
  with pytest.raises(UserError, match='no usable example'):
    sft.load_sft(sft_config(decoder_source[0], empty, ''), data.tokenizer)
  with pytest.raises(ConfigError, match='finetune.train_data'):
    sft.load_sft(sft_config(decoder_source[0], str(tmp_path / 'missing*.jsonl'), ''),
                 data.tokenizer)


def test_batches_are_a_function_of_seed_and_step_and_split_over_processes(
    tokenizer_path, decoder_source, copy_data):
  config = sft_config(decoder_source[0], *copy_data)
  data = sft.load_sft(config, tokenizer_lib.load_tokenizer(tokenizer_path))
  n = len(data.train_rows['inputs'])
  a = data.train_batch(0, 3, 8)
  np.testing.assert_array_equal(a['inputs'], data.train_batch(0, 3, 8)['inputs'])
  assert not np.array_equal(a['inputs'], data.train_batch(1, 3, 8)['inputs'])
  halves = [data.train_batch(0, 3, 8, process_index=i, process_count=2)['inputs'] for i in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), a['inputs'])
  # One epoch visits every packed row exactly once.
  seen = np.concatenate([data.train_batch(0, s, 1)['inputs'] for s in range(n)])
  distinct = lambda rows: len({row.tobytes() for row in rows})
  assert distinct(seen) == distinct(data.train_rows['inputs'])
  # Evaluation covers each example once; the filler rows carry no weight.
  total = sum(data.eval_batch(i, 8)['weights'].sum() for i in range(data.num_eval_batches(8)))
  assert total == data.eval_rows['weights'].sum()


def test_preference_rows(tmp_path, tokenizer_path, decoder_source):
  rows = [{'prompt': 'copy ab =', 'chosen': ' ab', 'rejected': ' ba'}] * 4
  rows.append({'prompt': 'copy ab =', 'chosen': ' ab'})
  path = write_jsonl(tmp_path / 'p.jsonl', rows)
  config = source_config(**{'objective.name': 'dpo', 'dpo.train_data': path,
                            'finetune.eval_fraction': 0.25})
  data = sft.load_preferences(config, tokenizer_lib.load_tokenizer(tokenizer_path))
  assert data.stats['train'].bad_lines == 1
  batch = data.train_batch(0, 0, 2)
  assert set(batch) == {f'{s}_{k}' for s in ('chosen', 'rejected')
                        for k in ('inputs', 'targets', 'weights', 'segment_ids', 'positions')}
  # Same prompt: identical unweighted (prompt) inputs up to the first response target.
  first = int(np.argmax(batch['chosen_weights'][0]))
  assert first > 0 and (batch['chosen_weights'][:, :first] == 0).all()
  np.testing.assert_array_equal(batch['chosen_inputs'][:, :first + 1],
                                batch['rejected_inputs'][:, :first + 1])
  assert not (batch['chosen_targets'] == batch['rejected_targets']).all()
