"""The SentencePiece tokenizer: fixed special ids, exact round trips, reproducible training, and
the shared interface (files, hashes, saving, BOS, offsets, errors)."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest

from research import errors
from research.data import tokenizer as tokenizer_lib

HAMLET = "To be, or not to be: that is the question:\n  Whether 'tis nobler in the mind to suffer"


def test_special_ids_are_as_declared(small_tokenizer):
  tok = small_tokenizer
  assert tok.vocab_size == 512
  assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id) == (0, 1, 2, 3)
  assert [tok.id_to_piece(i) for i in range(4)] == ['<pad>', '</s>', '<unk>', '<s>']
  assert tok.mask_id == 4 and tok.id_to_piece(4) == '[MASK]'
  assert tok.num_sentinels == 100
  assert [tok.sentinel_id(i) for i in (0, 1, 99)] == [5, 6, 104]
  assert tok.id_to_piece(tok.sentinel_id(99)) == '<extra_id_99>'
  with pytest.raises(errors.UserError, match='sentinel 100 does not exist'):
    tok.sentinel_id(100)


def test_round_trips_shakespeare_exactly(small_tokenizer, validation_documents):
  for document in validation_documents:
    assert small_tokenizer.decode(small_tokenizer.encode(document)) == document
  assert small_tokenizer.decode(small_tokenizer.encode(HAMLET)) == HAMLET  # Indent kept.


def test_unseen_characters_fall_back_to_bytes(small_tokenizer):
  text = 'Ophélie — 哈姆雷特 🎭'
  ids = small_tokenizer.encode(text)
  assert small_tokenizer.unk_id not in ids
  assert small_tokenizer.decode(ids) == text


def test_ordinary_text_never_yields_reserved_ids(small_tokenizer, validation_documents):
  ids = np.concatenate([small_tokenizer.encode(d) for d in validation_documents])
  assert ids.min() > small_tokenizer.sentinel_id(99)  # Newline and learned pieces only.
  assert ids.max() < small_tokenizer.vocab_size


def test_typed_mask_and_sentinels_encode_to_their_ids(small_tokenizer):
  tok = small_tokenizer
  assert tok.encode('[MASK]') == [tok.mask_id]
  assert tok.encode('<extra_id_0>') == [tok.sentinel_id(0)]
  ids = tok.encode('To be [MASK] not to be')
  assert ids.count(tok.mask_id) == 1
  assert tok.decode(ids) == 'To be [MASK] not to be'
  assert tok.encode('<extra_id_7> the question <extra_id_8>')[0] == tok.sentinel_id(7)


def test_decode_skips_pad_and_stops_at_nothing(small_tokenizer):
  tok = small_tokenizer
  ids = tok.encode('Good night,') + [tok.eos_id] + tok.encode(' sweet prince')
  assert tok.decode([tok.pad_id] + ids + [tok.pad_id] * 3) == 'Good night, sweet prince'
  assert tok.decode(np.array(ids, np.int32)) == 'Good night, sweet prince'
  assert tok.encode_batch(['Good night,', 'Ay']) == [tok.encode('Good night,'), tok.encode('Ay')]


def test_training_twice_gives_identical_files(train_documents, tmp_path):
  documents = train_documents[:6]
  paths = [tmp_path / 'a.model', tmp_path / 'b.model']
  for path in paths:
    tokenizer_lib.train_tokenizer(documents, 600, str(path), num_sentinels=10)
  assert paths[0].read_bytes() == paths[1].read_bytes()
  assert not list(tmp_path.glob('*.tmp'))


def test_unigram_and_load(train_documents, tmp_path):
  path = str(tmp_path / 'unigram.model')
  trained = tokenizer_lib.train_tokenizer(
      train_documents[:4], 800, path, model_type='unigram', num_sentinels=3
  )
  loaded = tokenizer_lib.load_tokenizer(path)
  assert loaded.model_proto == trained.model_proto
  assert (loaded.vocab_size, loaded.num_sentinels, loaded.mask_id) == (800, 3, 4)
  assert loaded.decode(loaded.encode(HAMLET)) == HAMLET


@pytest.mark.parametrize('vocab_size', [300, 420])
def test_too_small_vocab_is_a_config_error(train_documents, tmp_path, vocab_size):
  # 300 cannot hold the 362 reserved ids; 420 holds them but not the corpus characters as well.
  with pytest.raises(errors.ConfigError, match=r'^data\.vocab_size=') as e:
    tokenizer_lib.train_tokenizer(train_documents[:2], vocab_size, str(tmp_path / 'x.model'))
  assert e.value.field == 'data.vocab_size'
  assert 'use at least' in str(e.value)
  assert not (tmp_path / 'x.model').exists()


def test_bad_settings_are_config_errors(tmp_path):
  with pytest.raises(errors.ConfigError, match=r'^data\.tokenizer_type=\'wordpiece\''):
    tokenizer_lib.train_tokenizer(['a b'], 512, str(tmp_path / 'x.model'), model_type='wordpiece')
  with pytest.raises(errors.ConfigError, match=r'^data\.tokenizer=.*cannot read'):
    tokenizer_lib.load_tokenizer(str(tmp_path / 'missing.model'))
  (tmp_path / 'junk.model').write_bytes(b'not a model')
  with pytest.raises(errors.ConfigError, match='not a SentencePiece model'):
    tokenizer_lib.load_tokenizer(str(tmp_path / 'junk.model'))


def test_default_tokenizer_files_and_hash_are_the_model_file(small_tokenizer, tmp_path):
  proto = small_tokenizer.model_proto
  assert isinstance(small_tokenizer, tokenizer_lib.SentencePieceTokenizer)
  assert small_tokenizer.files == {'tokenizer.model': proto}
  assert small_tokenizer.sha256 == hashlib.sha256(proto).hexdigest()  # as prepared corpora hold
  assert small_tokenizer.chat_template is None and not small_tokenizer.adds_bos
  workdir = tmp_path / 'run'
  small_tokenizer.save(str(workdir))
  assert os.listdir(workdir) == ['tokenizer.model']
  assert (workdir / 'tokenizer.model').read_bytes() == proto
  assert tokenizer_lib.find_tokenizer(str(workdir)) == 'tokenizer.model'
  loaded = tokenizer_lib.load_tokenizer(str(workdir))
  assert loaded.model_proto == proto and loaded.encode(HAMLET) == small_tokenizer.encode(HAMLET)
  again = pickle.loads(pickle.dumps(small_tokenizer))
  assert again.encode(HAMLET) == small_tokenizer.encode(HAMLET) and again.sha256 == loaded.sha256


def test_bos_is_the_callers_choice(small_tokenizer):
  ids = small_tokenizer.encode(HAMLET)
  assert small_tokenizer.encode(HAMLET, add_bos=True) == [small_tokenizer.bos_id] + ids
  assert small_tokenizer.encode_batch([HAMLET], add_bos=True) == [[3] + ids]


def test_offsets_locate_each_id(small_tokenizer):
  text = 'To be, or not — 哈姆雷特\n  [MASK] 🎭'
  ids, offsets = small_tokenizer.encode_with_offsets(text)
  assert ids == small_tokenizer.encode(text)
  assert [start for start, _ in offsets] == sorted(start for start, _ in offsets)
  assert all(0 <= start <= end <= len(text) for start, end in offsets)
  assert text[slice(*offsets[ids.index(small_tokenizer.mask_id)])] == '[MASK]'


def test_paths_that_hold_no_tokenizer_are_one_line_errors(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(errors.ConfigError, match=r'^data\.tokenizer=.*empty.: holds no tokenizer '
                     r'\(tokenizer\.json, tokenizer\.model'):
    tokenizer_lib.load_tokenizer(str(tmp_path / 'empty'))
  with pytest.raises(errors.ConfigError, match=r'^data\.tokenizer=.*cannot read it'):
    tokenizer_lib.load_tokenizer(str(tmp_path / 'missing' / 'tokenizer.json'))
  (tmp_path / 'bad').mkdir()
  (tmp_path / 'bad' / 'tokenizer.json').write_text('{"not": "a tokenizer"}')
  with pytest.raises(errors.ConfigError, match='has a tokenizer.json the tokenizers library '
                     'cannot read') as e:
    tokenizer_lib.load_tokenizer(str(tmp_path / 'bad'))
  assert '\n' not in str(e.value)
