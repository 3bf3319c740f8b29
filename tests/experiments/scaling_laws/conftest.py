"""Fixtures for the scaling-law tests."""

from __future__ import annotations

import pathlib

import pytest

from experiments.scaling_laws import data

REPO = pathlib.Path(__file__).resolve().parents[3]
# Epoch's Chinchilla points ship with the repository (experiments/scaling_laws/data/README.md):
# every clone runs the reproduction, so a missing file is a failure, not a skip.
EPOCH_CSV = pathlib.Path(data.EPOCH_CSV)


@pytest.fixture(scope='session')
def epoch_csv() -> pathlib.Path:
  assert EPOCH_CSV.is_file(), f'{EPOCH_CSV} is missing from the checkout'
  return EPOCH_CSV
