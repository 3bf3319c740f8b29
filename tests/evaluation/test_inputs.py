"""Few-shot prompt construction, normalisation, input files and config overrides (no model)."""

import json

import pytest

from research import config_lib, loading
from research.errors import ConfigError, UserError
from research.evaluation import common, few_shot, generation


def _eval(**fields):
  e = config_lib.base_config().eval
  for key, value in fields.items():
    e[key] = value
  return e


def test_shots_are_k_distinct_others_and_deterministic():
  for index in range(10):
    shots = few_shot.choose_shots(10, index, k=4, seed=0)
    assert len(shots) == 4 == len(set(shots)) and index not in shots
    assert shots == few_shot.choose_shots(10, index, k=4, seed=0)
  by_seed = {tuple(few_shot.choose_shots(10, 3, k=4, seed=s)) for s in range(5)}
  assert len(by_seed) > 1  # the seed chooses
  assert sorted(few_shot.choose_shots(10, 3, k=9, seed=0)) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
  with pytest.raises(UserError, match='at most 9 others'):
    few_shot.choose_shots(10, 3, k=10, seed=0)


def test_prompt_holds_k_formatted_examples_then_the_query():
  inputs, targets = ['a', 'b', 'c', 'd'], ['1', '2', '3', '4']
  e = _eval(prompt_template='Q: {input}\nA: {target}', example_separator='\n\n', k=2, seed=1)
  prompts = few_shot.build_prompts(inputs, targets, e)
  for i, prompt in enumerate(prompts):
    *shots, query = prompt.split('\n\n')
    assert len(shots) == 2 and query == f'Q: {inputs[i]}\nA:'  # the space before target cut
    for shot in shots:
      q, a = shot.split('\n')
      j = inputs.index(q[len('Q: '):])
      assert j != i and a == f'A: {targets[j]}'
  assert prompts == few_shot.build_prompts(inputs, targets, e)
  zero = few_shot.build_prompts(inputs, targets, _eval(prompt_template='{input} = {target}', k=0))
  assert zero == ['a =', 'b =', 'c =', 'd =']


def test_braces_in_texts_are_kept():
  assert few_shot.format_example('{input} -> {target}', 'f({x})', '{y}') == 'f({x}) -> {y}'


@pytest.mark.parametrize('text, stop, expected', [
    (' red\nbasil -> blue', ('\n',), 'red'),
    ('\n\n  red  \n', ('\n',), 'red'),  # a leading line break is not the stop
    ('red. And more', ('.',), 'red'),
    ('red END x\ny', ('END', '\n'), 'red'),  # the first stop string in the text wins
    ('  two words ', (), 'two words'),
    ('', ('\n',), ''),
])
def test_normalise(text, stop, expected):
  assert common.normalise(text, stop) == expected


def test_exact_match_after_normalisation():
  predictions = [common.normalise(t, ('\n',)) for t in (' red\nx', 'Red', ' blue')]
  assert few_shot.exact_match(predictions, ['red', 'red', ' blue ']) == [True, False, True]


def _write(path, lines):
  path.write_text(''.join(line + '\n' for line in lines))
  return str(path)


def test_bad_input_files_name_the_file_line_and_fix(tmp_path):
  with pytest.raises(UserError, match='no such file'):
    few_shot.read_examples(str(tmp_path / 'missing.jsonl'))
  empty = _write(tmp_path / 'empty.jsonl', ['', '  '])
  with pytest.raises(UserError, match=f'{empty} is empty'):
    few_shot.read_examples(empty)
  bad = _write(tmp_path / 'bad.jsonl', ['{"input": "a", "target": "b"}', '', '{"input": '])
  with pytest.raises(UserError, match=f'{bad}:3: not valid JSON'):
    few_shot.read_examples(bad)
  missing = _write(tmp_path / 'missing_target.jsonl', ['{"input": "a", "target": "b"}',
                                                       '{"input": "a", "answer": "b"}'])
  with pytest.raises(UserError, match=r'missing_target.jsonl:2: the object has no "target" '
                     r"string; fields found: \['answer', 'input'\]"):
    few_shot.read_examples(missing)
  latin = tmp_path / 'latin.jsonl'
  latin.write_bytes(b'{"input": "a", "target": "b"}\n{"input": "caf\xe9", "target": "b"}\n')
  with pytest.raises(UserError, match='latin.jsonl:2: not UTF-8'):
    few_shot.read_examples(str(latin))
  number = _write(tmp_path / 'number.jsonl', ['{"input": 3, "reference": "b"}'])
  with pytest.raises(UserError, match='number.jsonl:1: the object has a int as its "input"'):
    generation.read_examples(number)
  refs = _write(tmp_path / 'refs.jsonl', ['{"input": "a", "references": []}'])
  with pytest.raises(UserError, match='refs.jsonl:1: "references" must be a non-empty list'):
    generation.read_examples(refs)


def test_generation_file_takes_one_or_several_references(tmp_path):
  path = _write(tmp_path / 'g.jsonl', [json.dumps({'input': 'a', 'reference': 'x'}),
                                       json.dumps({'input': 'b', 'references': ['y', 'z']})])
  assert generation.read_examples(path) == ([1, 2], ['a', 'b'], [['x'], ['y', 'z']])


def _saved_run(tmp_path):
  config = config_lib.base_config()
  config_lib.save_config(config, str(tmp_path / 'config.json'))
  return str(tmp_path)


def test_eval_overrides_apply_to_a_saved_config_and_the_model_stays(tmp_path):
  workdir = _saved_run(tmp_path)
  config = loading.load_config(workdir, [('eval.k', '5'), ('eval.stop', "('.', '\\n')"),
                                            ('eval.prompt_template', 'Q {input} A {target}')])
  assert config.eval.k == 5 and config.eval.stop == ('.', '\n')
  assert config.eval.prompt_template == 'Q {input} A {target}'
  typed = loading.load_config(workdir, [('eval.prompt_template', r'Q: {input}\nA: {target}'),
                                           ('eval.example_separator', r'\n\n'),
                                           ('eval.seed', '3')])
  assert typed.eval.prompt_template == 'Q: {input}\nA: {target}'
  assert typed.eval.example_separator == '\n\n' and typed.eval.seed == 3
  assert common.unescape(r'a\\nb\tc') == 'a\\nb\tc'  # an escaped backslash stays one
  assert loading.load_config(workdir).eval.stop == ('\n',)  # saved as a JSON list
  with pytest.raises(UserError, match='can only change eval'):
    loading.load_config(workdir, [('model.num_layers', '2')])
  with pytest.raises(ConfigError, match='unknown key'):
    loading.load_config(workdir, [('eval.shots', '2')])
  with pytest.raises(ConfigError, match='eval.prompt_template'):
    loading.load_config(workdir, [('eval.prompt_template', '{target} then {input}')])
  with pytest.raises(ConfigError, match='eval.k'):
    loading.load_config(workdir, [('eval.k', '-1')])
