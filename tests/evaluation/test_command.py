"""`python -m research.evaluate --task=...` as a researcher types it."""

import json
import os
import subprocess
import sys

from tests.evaluation.conftest import TABLE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _evaluate(*args):
  env = {**os.environ, 'XLA_FLAGS': ''}  # one CPU device, as on a laptop
  return subprocess.run([sys.executable, '-m', 'research.evaluate', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_few_shot_command_prints_one_json_line(decoder_workdir, table_jsonl, tmp_path):
  out = str(tmp_path / 'out')
  result = _evaluate(f'--workdir={decoder_workdir}', '--task=few_shot', f'--data={table_jsonl}',
                     '--config.eval.k=1', r'--config.eval.example_separator=\n', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  line = json.loads(result.stdout.strip().splitlines()[-1])
  assert line['task'] == 'few_shot' and line['k'] == 1 and line['examples'] == len(TABLE)
  assert line['accuracy'] >= 0.75
  prompts = [json.loads(l)['prompt'] for l in open(os.path.join(out, 'few_shot_predictions.jsonl'))]
  # k=1: one example, then the query, after a separator typed as the two characters \n.
  assert all(p.count('\n') == 1 for p in prompts)


def test_bad_input_exits_2_with_one_line(decoder_workdir, tmp_path):
  empty = tmp_path / 'empty.jsonl'
  empty.write_text('\n')
  result = _evaluate(f'--workdir={decoder_workdir}', '--task=generation', f'--data={empty}')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: {empty} is empty: write inputs with references, one JSON object per line, e.g. '
      '{"input": "ROMEO: But soft,", "reference": "what light through yonder window breaks?"}')
