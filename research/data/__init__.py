"""Data: sources (TFDS builders, tfds:NAME, text:GLOB), tokenizer, token stores, sampler.

The trainer needs only `load_dataset(config.data, workdir=...)`; sampling and evaluation need
only `load_tokenizer_from_workdir(workdir)`.
"""

from research.data.pipeline import Dataset
from research.data.pipeline import load_dataset
from research.data.pipeline import load_tokenizer_from_workdir
from research.data.sources import load_documents
from research.data.store import TokenStore
from research.data.tokenizer import load_tokenizer
from research.data.tokenizer import Tokenizer
from research.data.tokenizer import train_tokenizer

__all__ = [
    'Dataset',
    'load_dataset',
    'load_documents',
    'load_tokenizer',
    'load_tokenizer_from_workdir',
    'TokenStore',
    'Tokenizer',
    'train_tokenizer',
]
