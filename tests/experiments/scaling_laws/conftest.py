"""Fixtures for the scaling-law tests."""

from __future__ import annotations

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
# Reference data lives beside the repository, never inside it (see ../shared/data/README.md).
EPOCH_CSV = REPO.parent / 'shared' / 'data' / 'epoch_chinchilla_points.csv'


@pytest.fixture(scope='session')
def epoch_csv() -> pathlib.Path:
  if not EPOCH_CSV.exists():
    pytest.skip(f'reference data {EPOCH_CSV} is absent')
  return EPOCH_CSV
