"""Strips outputs and execution counts from notebooks before committing: python -m colab.strip

With no arguments, every colab/*.ipynb; else the notebooks named. Prints what changed.
"""

import glob
import os
import sys

import nbformat


def strip(path: str) -> bool:
  """Removes outputs, execution counts and execution metadata; True when the file changed."""
  nb = nbformat.read(path, as_version=4)
  before = nbformat.writes(nb)
  for cell in nb.cells:
    cell.metadata.pop('execution', None)
    if cell.cell_type == 'code':
      cell.outputs = []
      cell.execution_count = None
  after = nbformat.writes(nb)
  if after != before:
    with open(path, 'w', encoding='utf-8') as f:
      f.write(after)
  return after != before


def main(argv):
  paths = argv[1:] or sorted(glob.glob(os.path.join(os.path.dirname(__file__), '*.ipynb')))
  for path in paths:
    if strip(path):
      print(f'stripped {path}')


if __name__ == '__main__':
  main(sys.argv)
