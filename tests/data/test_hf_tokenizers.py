"""Hugging Face tokenizers behind lmforge's one interface: the ids and text of transformers'
AutoTokenizer, chat templates as apply_chat_template renders them, and HF files in and out.

Every tokenizer is built here from a small generated corpus; nothing is downloaded.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil

import pytest
import sentencepiece as spm

from research import errors
from research.data import chat_template
from research.data import hf_tokenizer
from research.data import pipeline
from research.data import sft
from research.data import tokenizer as tokenizer_lib

transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')

pytestmark = pytest.mark.hf

MULTILINGUAL = ('Hello, world! Grüße aus München: Äpfel, Öl und Übermut. 你好，世界。'
                'مرحبا بالعالم 🎭🚀 isn\'t it?\ndef f(x):\n\treturn x + 1  # two spaces\n')
CONVERSATION = [{'role': 'system', 'content': 'You answer briefly.'},
                {'role': 'user', 'content': 'Wie geht es dir? 你好'},
                {'role': 'assistant', 'content': 'Gut, danke! 🎭'}]

# Llama 3's template, shortened; raise_exception as real templates use it.
LLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
# Qwen 2's, with transformers' {% generation %} marker around assistant replies.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\n' }}{% generation %}{{- message.content + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\n' }}"
    "{%- elif not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}")
LLAMA3_SPECIALS = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>',
                   '<|end_header_id|>', '<|eot_id|>', '<|im_start|>', '<|im_end|>']


def _corpus() -> list[str]:
  """A few hundred lines: random words in Latin, German, Chinese and Arabic letters, and code."""
  rng = random.Random(0)
  letters = list('abcdefghijklmnopqrstuvwxyzäöüß') + list('你好世界天气很今') + list('مرحبالع')
  lines = [' '.join(''.join(rng.choice(letters) for _ in range(rng.randint(1, 7)))
                    for _ in range(12)) for _ in range(300)]
  return lines + ['Hello world, this is English.\n  indented', 'Grüße aus München, Äpfel, Öl.',
                  'emoji 🎭🚀 ok', 'def f(x):\n\treturn x + 1\n', "isn't it? yes."] * 5


def _sentencepiece(**settings) -> bytes:
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_writer=writer,
                                 character_coverage=1.0, num_threads=1, minloglevel=2, **settings)
  return writer.getvalue()


@pytest.fixture(scope='module')
def byte_level_dir(tmp_path_factory) -> str:
  """(a) A Llama-3-style byte-level BPE: bos added by its post-processor, a chat template."""
  tk = tokenizers.Tokenizer(tokenizers.models.BPE())
  tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tk.decoder = tokenizers.decoders.ByteLevel()
  tk.train_from_iterator(_corpus(), tokenizers.trainers.BpeTrainer(
      vocab_size=500, special_tokens=LLAMA3_SPECIALS, show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  bos = tk.token_to_id('<|begin_of_text|>')
  tk.post_processor = tokenizers.processors.TemplateProcessing(
      single='<|begin_of_text|> $A', special_tokens=[('<|begin_of_text|>', bos)])
  out = str(tmp_path_factory.mktemp('llama3'))
  transformers.PreTrainedTokenizerFast(
      tokenizer_object=tk, bos_token='<|begin_of_text|>', eos_token='<|eot_id|>',
      chat_template=LLAMA3_TEMPLATE).save_pretrained(out)
  return out


@pytest.fixture(scope='module')
def llama_sentencepiece_dir(tmp_path_factory) -> str:
  """(b) A Llama-2-style sentencepiece BPE (unk 0, bos 1, eos 2) as transformers' LlamaTokenizer
  saves it, with the .model beside its tokenizer.json."""
  model = _sentencepiece(vocab_size=400, model_type='bpe', unk_id=0, bos_id=1, eos_id=2,
                         pad_id=-1, byte_fallback=True)
  sp = spm.SentencePieceProcessor(model_proto=model)
  vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
  out = str(tmp_path_factory.mktemp('llama2'))
  transformers.LlamaTokenizer(vocab=vocab, add_bos_token=True).save_pretrained(out)
  with open(os.path.join(out, 'tokenizer.model'), 'wb') as f:
    f.write(model)
  return out


@pytest.fixture(scope='module')
def bert_legacy_dir(tmp_path_factory) -> str:
  """BERT's vocab.txt with a tokenizer_config.json that names no special token (as the Hub's
  bert-base-uncased)."""
  wordpiece = tokenizers.BertWordPieceTokenizer(lowercase=True)
  wordpiece.train_from_iterator(_corpus(), vocab_size=400, show_progress=False)
  out = str(tmp_path_factory.mktemp('bert_legacy'))
  wordpiece.save_model(out)
  with open(os.path.join(out, 'tokenizer_config.json'), 'w') as f:
    json.dump({'tokenizer_class': 'BertTokenizer', 'do_lower_case': True}, f)
  return out


@pytest.fixture(scope='module')
def bert_dir(bert_legacy_dir, tmp_path_factory) -> str:
  """(c) A BERT WordPiece as BertTokenizerFast saves it from vocab.txt."""
  out = str(tmp_path_factory.mktemp('bert'))
  transformers.BertTokenizerFast.from_pretrained(bert_legacy_dir).save_pretrained(out)
  return out


@pytest.fixture(scope='module')
def t5_dir(tmp_path_factory) -> str:
  """(d) A T5 unigram spiece.model (pad 0, eos 1, unk 2, no bos) with 10 sentinels, as
  T5TokenizerFast saves it, the spiece.model beside."""
  model = _sentencepiece(vocab_size=300, model_type='unigram', pad_id=0, eos_id=1, unk_id=2,
                         bos_id=-1)
  sp = spm.SentencePieceProcessor(model_proto=model)
  out = str(tmp_path_factory.mktemp('t5'))
  vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.vocab_size())]
  transformers.T5TokenizerFast(vocab=vocab, extra_ids=10).save_pretrained(out)
  with open(os.path.join(out, 'spiece.model'), 'wb') as f:
    f.write(model)
  return out


@pytest.fixture(scope='module')
def gpt2_legacy_dir(tmp_path_factory) -> str:
  """GPT-2's vocab.json + merges.txt as on the Hub: the configs name no special token, config.json
  says gpt2 and generation_config.json holds eos."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(_corpus(), vocab_size=400, special_tokens=['<|endoftext|>'],
                          show_progress=False)
  out = str(tmp_path_factory.mktemp('gpt2'))
  bpe.save_model(out)
  for name, content in (('tokenizer_config.json', {'model_max_length': 1024}),
                        ('config.json', {'model_type': 'gpt2'}),
                        ('generation_config.json', {'bos_token_id': 0, 'eos_token_id': 0})):
    with open(os.path.join(out, name), 'w') as f:
      json.dump(content, f)
  return out


HF_DIRS = ['byte_level_dir', 'llama_sentencepiece_dir', 'bert_dir', 't5_dir', 'bert_legacy_dir',
           'gpt2_legacy_dir']


@pytest.mark.parametrize('fixture', HF_DIRS)
def test_ids_text_and_specials_match_transformers(fixture, request):
  directory = request.getfixturevalue(fixture)
  ours = tokenizer_lib.load_tokenizer(directory)
  theirs = transformers.AutoTokenizer.from_pretrained(directory)
  assert isinstance(ours, hf_tokenizer.HFTokenizer)
  for text in (MULTILINGUAL, 'x', ' leading and trailing  ', ''):
    ids = theirs(text, add_special_tokens=False).input_ids
    assert ours.encode(text) == ids
    assert ours.decode(ids) == theirs.decode(ids)
  assert ours.encode_batch([MULTILINGUAL, 'x']) == [ours.encode(MULTILINGUAL), ours.encode('x')]
  assert ours.vocab_size == len(theirs)
  assert ours.eos_id == (theirs.eos_token_id if theirs.eos_token_id is not None
                         else theirs.sep_token_id)
  assert (ours.bos_id, ours.unk_id) == (theirs.bos_token_id, theirs.unk_token_id)
  assert ours.pad_id == (theirs.pad_token_id if theirs.pad_token_id is not None else ours.eos_id)
  if theirs.mask_token_id is not None:
    assert ours.mask_id == theirs.mask_token_id
  assert [ours.sentinel_id(i) for i in range(ours.num_sentinels)] == [
      theirs.convert_tokens_to_ids(f'<extra_id_{i}>') for i in range(ours.num_sentinels)]
  # BOS: what add_special_tokens=True puts first, and only for checkpoints that add one.
  with_specials = theirs('x').input_ids
  assert ours.adds_bos == (ours.bos_id is not None and with_specials[0] == ours.bos_id)
  if ours.adds_bos:
    assert ours.encode('x', add_bos=True) == with_specials


def test_checkpoint_conventions(byte_level_dir, llama_sentencepiece_dir, t5_dir, bert_dir):
  llama3, llama2 = (tokenizer_lib.load_tokenizer(d) for d in (byte_level_dir,
                                                              llama_sentencepiece_dir))
  assert llama3.adds_bos and llama2.adds_bos  # Llama prepends bos, as lmforge's callers will
  assert llama3.pad_id == llama3.eos_id and llama3.unk_id is None  # no pad, no unk
  t5 = tokenizer_lib.load_tokenizer(t5_dir)  # tokenizer.json wins over the spiece.model
  assert (t5.pad_id, t5.eos_id, t5.unk_id, t5.bos_id, t5.adds_bos) == (0, 1, 2, None, False)
  assert t5.num_sentinels == 10 and t5.id_to_piece(t5.sentinel_id(9)) == '<extra_id_9>'
  with pytest.raises(errors.UserError, match='has no bos token'):
    t5.encode('x', add_bos=True)
  bert = tokenizer_lib.load_tokenizer(bert_dir)
  assert bert.eos_id == bert.piece_to_id('[SEP]') and bert.id_to_piece(bert.mask_id) == '[MASK]'
  assert bert.piece_to_id('not a piece') == bert.unk_id


@pytest.mark.parametrize('template', [LLAMA3_TEMPLATE, QWEN_TEMPLATE], ids=['llama3', 'qwen'])
@pytest.mark.parametrize('add_generation_prompt', [False, True])
def test_chat_template_renders_as_apply_chat_template(byte_level_dir, template,
                                                      add_generation_prompt):
  ours = tokenizer_lib.load_tokenizer(byte_level_dir)
  theirs = transformers.AutoTokenizer.from_pretrained(byte_level_dir)
  if template == LLAMA3_TEMPLATE:
    assert ours.chat_template == template  # from the chat_template.jinja save_pretrained wrote
  expected = theirs.apply_chat_template(CONVERSATION, chat_template=template, tokenize=False,
                                        add_generation_prompt=add_generation_prompt)
  assert chat_template.render(template, CONVERSATION, special_tokens=ours.special_tokens,
                              add_generation_prompt=add_generation_prompt) == expected


def test_chat_template_errors_are_one_line(byte_level_dir):
  ours = tokenizer_lib.load_tokenizer(byte_level_dir)
  with pytest.raises(errors.UserError, match='refused the conversation: Unknown role: tool'):
    chat_template.render(ours.chat_template, [{'role': 'tool', 'content': 'x'}])
  with pytest.raises(errors.UserError, match=r'^the chat template does not compile \(line 1'):
    chat_template.render('{% for m in messages %}', CONVERSATION)


@pytest.mark.parametrize('template', [LLAMA3_TEMPLATE, QWEN_TEMPLATE], ids=['llama3', 'qwen'])
def test_sft_chat_rows_use_the_template_and_mask_assistant_turns(byte_level_dir, template):
  ours = tokenizer_lib.load_tokenizer(byte_level_dir)
  theirs = transformers.AutoTokenizer.from_pretrained(byte_level_dir)
  messages = CONVERSATION + [{'role': 'user', 'content': 'Und morgen?'},
                             {'role': 'assistant', 'content': 'Regen.\n\tVielleicht.'}]
  ids, flags = sft.encode_chat(messages, ours, template)
  assert ids == theirs.apply_chat_template(messages, chat_template=template, tokenize=True,
                                           return_dict=False)
  end = '<|eot_id|>' if template == LLAMA3_TEMPLATE else '<|im_end|>'
  trailing = '' if template == LLAMA3_TEMPLATE else '\n'
  response = ours.decode([i for i, f in zip(ids, flags) if f])
  assert response == f'Gut, danke! 🎭{end}{trailing}Regen.\n\tVielleicht.{end}{trailing}'
  if template == QWEN_TEMPLATE:  # where the template marks replies, transformers agrees
    marked = theirs.apply_chat_template(messages, chat_template=template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    assert [f for f, m in zip(flags, marked['assistant_masks']) if f != m] in ([], [1, 1])


def test_a_template_that_rewrites_history_is_a_bad_row(byte_level_dir):
  ours = tokenizer_lib.load_tokenizer(byte_level_dir)
  # Renders the last assistant turn in full and earlier ones cut short, like templates that
  # drop past reasoning: prefixes are not prefixes.
  template = ("{% for m in messages %}{{ m['role'] + ':' }}"
              "{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'][:2] }}"
              "{% else %}{{ m['content'] }}{% endif %}{{ '\n' }}{% endfor %}")
  messages = CONVERSATION + [{'role': 'user', 'content': 'more'},
                             {'role': 'assistant', 'content': 'done'}]
  assert 'renders the conversation up to message 2 differently' in sft.encode_chat(
      messages, ours, template)
  assert sft.encode_chat([{'role': 'user', 'content': 'hi'}], ours, template) == (
      'a chat needs at least one assistant message')


def test_pickling_and_saving_keep_the_tokenizer(byte_level_dir, tmp_path):
  ours = tokenizer_lib.load_tokenizer(byte_level_dir)
  again = pickle.loads(pickle.dumps(ours))
  assert (again.encode(MULTILINGUAL), again.sha256, again.chat_template, again.adds_bos) == (
      ours.encode(MULTILINGUAL), ours.sha256, ours.chat_template, ours.adds_bos)
  workdir = str(tmp_path / 'run')
  ours.save(workdir)
  assert sorted(os.listdir(workdir)) == ['chat_template.jinja', 'tokenizer.json',
                                         'tokenizer_config.json']
  assert pipeline.load_tokenizer_from_workdir(workdir).sha256 == ours.sha256
  assert tokenizer_lib.load_tokenizer(os.path.join(workdir, 'tokenizer.json')).sha256 == ours.sha256


def test_copy_tokenizer_files_completes_legacy_directories(gpt2_legacy_dir, tmp_path):
  written = hf_tokenizer.copy_tokenizer_files(gpt2_legacy_dir, str(tmp_path))
  assert written == ['merges.txt', 'tokenizer.json', 'tokenizer_config.json', 'vocab.json']
  copied = tokenizer_lib.load_tokenizer(str(tmp_path))  # no config.json, no generation config
  source = tokenizer_lib.load_tokenizer(gpt2_legacy_dir)
  assert copied.sha256 == source.sha256 and copied.eos_id == 0
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  text = MULTILINGUAL + '<|endoftext|>'
  assert copied.encode(text) == theirs(text, add_special_tokens=False).input_ids
  assert copied.encode(text)[-1] == theirs.eos_token_id == 0


def test_copy_tokenizer_files_of_a_sentencepiece_directory(t5_dir, tmp_path):
  written = hf_tokenizer.copy_tokenizer_files(t5_dir, str(tmp_path))
  assert 'spiece.model' in written and 'tokenizer.json' in written
  assert tokenizer_lib.load_tokenizer(str(tmp_path)).sha256 == (
      tokenizer_lib.load_tokenizer(t5_dir).sha256)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(errors.ConfigError, match='holds no tokenizer'):
    hf_tokenizer.copy_tokenizer_files(str(tmp_path / 'empty'), str(tmp_path / 'out'))


@pytest.fixture(scope='module', params=['bpe', 'unigram'])
def lmforge_tokenizer(request, tmp_path_factory):
  path = str(tmp_path_factory.mktemp(f'lmforge_{request.param}') / 'tokenizer.model')
  return tokenizer_lib.train_tokenizer(_corpus(), 600, path, num_sentinels=3,
                                       model_type=request.param)


@pytest.mark.parametrize('family', ['decoder', 'encoder_decoder'])
def test_write_hf_tokenizer_gives_transformers_lmforge_ids(lmforge_tokenizer, family, tmp_path):
  written = hf_tokenizer.write_hf_tokenizer(lmforge_tokenizer, str(tmp_path), family=family,
                                            chat_template=chat_template.LMFORGE_TEMPLATE)
  assert written == ['chat_template.jinja', 'tokenizer.json', 'tokenizer.model',
                     'tokenizer_config.json']
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  for text in [MULTILINGUAL, 'To be [MASK] or <extra_id_2>', '   three spaces'] + _corpus()[:40]:
    ids = lmforge_tokenizer.encode(text)
    assert theirs(text, add_special_tokens=False).input_ids == ids, text
    assert theirs.decode(ids) == lmforge_tokenizer.decode(ids)
  assert len(theirs) == lmforge_tokenizer.vocab_size
  assert (theirs.pad_token_id, theirs.eos_token_id, theirs.unk_token_id, theirs.bos_token_id,
          theirs.mask_token_id) == (0, 1, 2, 3, 4)
  assert theirs.convert_tokens_to_ids('<extra_id_2>') == lmforge_tokenizer.sentinel_id(2)
  # Encoding with special tokens: lmforge's decoders see no bos; its encoders end with eos.
  assert theirs('x').input_ids == lmforge_tokenizer.encode('x') + (
      [1] if family == 'encoder_decoder' else [])
  # The exported template gives the ids lmforge's SFT trains on without one.
  messages = CONVERSATION + [{'role': 'user', 'content': 'Noch was?'},
                             {'role': 'assistant', 'content': 'Nein.'}]
  ids, _ = sft.encode_pieces(sft.pieces_of({'messages': messages}), lmforge_tokenizer)
  assert theirs.apply_chat_template(messages, tokenize=True, return_dict=False) == ids


def test_write_hf_tokenizer_refuses_a_foreign_sentencepiece_model(llama_sentencepiece_dir,
                                                                  tmp_path):
  foreign = tokenizer_lib.load_tokenizer(os.path.join(llama_sentencepiece_dir, 'tokenizer.model'))
  assert isinstance(foreign, tokenizer_lib.SentencePieceTokenizer)
  assert (foreign.unk_id, foreign.bos_id, foreign.eos_id, foreign.pad_id) == (0, 1, 2, 2)
  with pytest.raises(errors.UserError, match='not a SentencePiece model lmforge trained'):
    hf_tokenizer.write_hf_tokenizer(foreign, str(tmp_path))


def test_write_hf_tokenizer_of_a_bare_tokenizer_json(byte_level_dir, tmp_path):
  (tmp_path / 'bare').mkdir()
  shutil.copyfile(os.path.join(byte_level_dir, 'tokenizer.json'), tmp_path / 'bare' / 'x.json')
  bare = tokenizer_lib.load_tokenizer(str(tmp_path / 'bare' / 'x.json'))
  assert (bare.bos_id, bare.chat_template, bare.special_tokens) == (None, None, {})
  written = hf_tokenizer.write_hf_tokenizer(bare, str(tmp_path / 'out'))
  assert written == ['tokenizer.json', 'tokenizer_config.json']
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / 'out'))
  assert theirs(MULTILINGUAL, add_special_tokens=False).input_ids == bare.encode(MULTILINGUAL)


def test_prepare_and_resume_with_a_hf_tokenizer(byte_level_dir, tmp_path, make_data_config):
  corpus = tmp_path / 'corpus.jsonl'
  corpus.write_text(''.join(json.dumps({'text': line}) + '\n' for line in _corpus()))
  tokenizer = tokenizer_lib.load_tokenizer(byte_level_dir)
  config = make_data_config(str(tmp_path / 'cache'), source=f'jsonl:{corpus}', seq_len=16,
                            tokenizer=byte_level_dir, vocab_size=tokenizer.vocab_size,
                            validation_fraction=0.1)
  workdir = str(tmp_path / 'run')
  dataset = pipeline.load_dataset(config, workdir=workdir)
  assert dataset.tokenizer.sha256 == tokenizer.sha256
  assert tokenizer_lib.find_tokenizer(workdir) == 'tokenizer.json'
  # Documents start with bos (Llama's convention) and end with eos.
  stream = dataset.train.gather([0], dataset.train.num_tokens)[0]
  assert stream[0] == tokenizer.bos_id and stream[-1] == tokenizer.eos_id
  assert (stream == tokenizer.bos_id).sum() == dataset.train.num_documents
  resumed = pipeline.load_dataset(config.copy_and_resolve_references(), workdir=workdir)
  assert resumed.tokenizer.sha256 == tokenizer.sha256
  shutil.rmtree(workdir)
