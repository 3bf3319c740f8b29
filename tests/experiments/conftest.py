"""The studies' tests run each study's machinery end to end, on one device (one_device_meshes
in tests/conftest.py)."""

import pytest


@pytest.fixture(autouse=True)
def _one_device(one_device_meshes):
  del one_device_meshes
