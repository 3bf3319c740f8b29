"""Data: sources, tokenizer, Beam preparation into ArrayRecord shards, Grain loading, mixtures.

The trainer needs only `load_dataset(config.data, workdir=...)`; sampling and evaluation need
only `load_tokenizer_from_workdir(workdir)`. `load_tokenizer` reads SentencePiece and Hugging Face
tokenizers alike (research.data.tokenizer); the importer and exporter copy and write HF tokenizer
files with `copy_tokenizer_files` and `write_hf_tokenizer` (research.data.hf_tokenizer). Corpora
are prepared once with `python -m research.data.prepare` (or on first use, for small local
sources).
"""

from research.data.pipeline import Dataset
from research.data.pipeline import load_dataset
from research.data.pipeline import load_tokenizer_from_workdir
from research.data.pipeline import MixtureDataset
from research.data.hf_tokenizer import copy_tokenizer_files
from research.data.hf_tokenizer import HFTokenizer
from research.data.hf_tokenizer import write_hf_tokenizer
from research.data.prepared import PreparedSplit
from research.data.tokenizer import load_tokenizer
from research.data.tokenizer import SentencePieceTokenizer
from research.data.tokenizer import Tokenizer
from research.data.tokenizer import train_tokenizer

__all__ = [
    'copy_tokenizer_files',
    'Dataset',
    'HFTokenizer',
    'load_dataset',
    'load_tokenizer',
    'load_tokenizer_from_workdir',
    'MixtureDataset',
    'PreparedSplit',
    'SentencePieceTokenizer',
    'Tokenizer',
    'train_tokenizer',
    'write_hf_tokenizer',
]
