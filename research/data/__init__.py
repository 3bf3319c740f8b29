"""Data: sources, tokenizer, Beam preparation into ArrayRecord shards, Grain loading, mixtures.

The trainer needs only `load_dataset(config.data, workdir=...)`; sampling and evaluation need
only `load_tokenizer_from_workdir(workdir)`. Corpora are prepared once with
`python -m research.data.prepare` (or on first use, for small local sources).
"""

from research.data.pipeline import Dataset
from research.data.pipeline import load_dataset
from research.data.pipeline import load_tokenizer_from_workdir
from research.data.pipeline import MixtureDataset
from research.data.prepared import PreparedSplit
from research.data.tokenizer import load_tokenizer
from research.data.tokenizer import Tokenizer
from research.data.tokenizer import train_tokenizer

__all__ = [
    'Dataset',
    'load_dataset',
    'load_tokenizer',
    'load_tokenizer_from_workdir',
    'MixtureDataset',
    'PreparedSplit',
    'Tokenizer',
    'train_tokenizer',
]
