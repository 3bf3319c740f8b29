"""T5 v1.1 base shape: 12 + 12 layers x 768, 12 heads of 64, gated-GELU 2,048, untied output.

Benchmark (one JSON line: tokens_per_sec, mfu, step_ms, peak_memory):
  python -m research.benchmark --config=configs/encoder_decoder/t5_base.py
Pre-train by span corruption on a real corpus (users with the dataset in their TFDS data_dir):
  python -m research.train --config=configs/encoder_decoder/t5_base.py \
      --config.data.source=tfds:c4 --workdir=runs/t5_base
Load Google's checkpoint instead (a local Hugging Face directory, e.g. google/t5-v1_1-base):
  from research.models import hf; config, params = hf.convert('/path/to/t5-v1_1-base')

The T5 v1.1 recipe of configs/encoder_decoder/t5_small.py at the base shape: 247,577,856 parameters (198.2M outside the two embedding
tables), as google/t5-v1_1-base.
"""

import os

from research import config_lib


def get_config(arg=None):
  del arg
  c = config_lib.load_config_file(os.path.join(os.path.dirname(__file__), 't5_small.py'))
  c.name = 'encoder_decoder/t5_base'
  c.model.d_model = 768
  c.model.num_layers = 12  # each of the encoder and the decoder
  c.model.num_heads = 12
  c.model.d_ff = 2048
  return c
