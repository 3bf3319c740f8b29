"""Checkpoint integrity: a manifest of checksums per step, verified before a restore.

Orbax writes a step atomically (a temporary directory renamed when complete), but nothing in
its format detects bytes that change afterwards: zarr's crc32c covers only the chunk index,
so a flipped byte in a data file restores silently as wrong numbers. Once a save has finished,
process 0 writes `lmforge_manifest.json` into the step directory: every file's size and
SHA-256, and the run's config (which lets research.sample and research.evaluate name the field
when config.json no longer matches the checkpoint). A step is intact when every listed file is
present with its size and checksum.

Damaged steps are moved aside into WORKDIR/checkpoints_damaged/, never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

MANIFEST = 'lmforge_manifest.json'
DAMAGED_DIR = 'checkpoints_damaged'


def step_dir(checkpoint_dir: str, step: int) -> str:
  return os.path.join(checkpoint_dir, str(step))


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def _files(directory: str) -> list[str]:
  out = []
  for root, _, names in os.walk(directory):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), directory)
      if rel != MANIFEST:
        out.append(rel)
  return sorted(out)


def has_manifest(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, MANIFEST))


def write_manifest(directory: str, config_json: dict | None) -> None:
  """Records every file's size and checksum (atomically: a partial manifest never exists)."""
  files = {rel: [os.path.getsize(os.path.join(directory, rel)),
                 _sha256(os.path.join(directory, rel))] for rel in _files(directory)}
  tmp = os.path.join(directory, MANIFEST + '.tmp')
  with open(tmp, 'w') as f:
    json.dump({'version': 1, 'files': files, 'config': config_json}, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(directory, MANIFEST))


def read_manifest(directory: str) -> dict | None:
  try:
    with open(os.path.join(directory, MANIFEST)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def problem(directory: str) -> str | None:
  """What is wrong with a step directory, or None when it is intact (or has no manifest yet:
  the caller then relies on the restore itself and the finiteness check)."""
  if not os.path.isdir(directory):
    return 'its directory is missing'
  if not has_manifest(directory):
    return None
  manifest = read_manifest(directory)
  if manifest is None or 'files' not in manifest:
    return f'its {MANIFEST} is unreadable'
  for rel, (size, digest) in sorted(manifest['files'].items()):
    path = os.path.join(directory, rel)
    if not os.path.isfile(path):
      return f'{rel} is missing'
    if os.path.getsize(path) != size:
      return f'{rel} has {os.path.getsize(path)} bytes, {size} when saved (truncated?)'
    if _sha256(path) != digest:
      return f'{rel} differs from its checksum at save (corrupted)'
  return None


def move_aside(workdir: str, directory: str, step: int) -> str:
  """Moves a damaged step out of checkpoints/ (never deletes it); returns where it went."""
  target_root = os.path.join(workdir, DAMAGED_DIR)
  os.makedirs(target_root, exist_ok=True)
  target, n = os.path.join(target_root, str(step)), 1
  while os.path.exists(target):
    target, n = os.path.join(target_root, f'{step}.{n}'), n + 1
  shutil.move(directory, target)
  return target


def warn(message: str) -> None:
  print(f'warning: {message}', file=sys.stderr, flush=True)
