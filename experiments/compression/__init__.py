"""Compression study (issue 23): PTQ, pruning and distillation of one Shakespeare decoder."""
