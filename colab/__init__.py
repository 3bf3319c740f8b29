"""Colab notebooks (see README's table); `python -m colab.strip` strips their outputs."""
