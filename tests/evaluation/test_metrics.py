"""Generation metrics on strings whose scores are known by hand."""

import pytest

from research.evaluation import generation


def test_identical_texts_score_100_everywhere():
  texts = ['the cat sat on the mat', 'a quick brown fox jumps over it']
  scores = generation.corpus_scores(texts, [[t] for t in texts])
  for name in ('bleu', 'chrf', 'rouge1', 'rouge2', 'rougeL'):
    assert scores[name] == pytest.approx(100.0), name


def test_bleu_matches_the_hand_computed_value():
  # n-gram precisions 5/6, 3/5, 2/4, 1/3 and equal lengths (no brevity penalty).
  scores = generation.corpus_scores(['the cat sat on the mat'], [['the cat sat on a mat']])
  assert scores['bleu'] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-6)


def test_rouge_matches_the_hand_computed_values():
  # Unigrams: 2 of 3 shared; bigrams: 1 of 2; longest common subsequence: 2 of 3.
  scores = generation.corpus_scores(['the cat sat'], [['the cat ran']])
  assert scores['rouge1'] == pytest.approx(100 * 2 / 3)
  assert scores['rouge2'] == pytest.approx(100 * 1 / 2)
  assert scores['rougeL'] == pytest.approx(100 * 2 / 3)


def test_chrf_of_disjoint_and_identical_texts():
  assert generation.corpus_scores(['abc'], [['xyz']])['chrf'] == pytest.approx(0.0)
  assert generation.corpus_scores(['abc'], [['abc']])['chrf'] == pytest.approx(100.0)
  partial = generation.corpus_scores(['abcd'], [['abce']])['chrf']
  assert 0 < partial < 100


def test_multiple_references_take_the_best_and_may_differ_in_number():
  predictions = ['the cat sat on the mat', 'hello there my friend']
  one = generation.corpus_scores(predictions, [['a dog ran far away'], ['hello there my friend']])
  two = generation.corpus_scores(predictions, [['a dog ran far away', 'the cat sat on the mat'],
                                               ['hello there my friend']])
  assert two['bleu'] == pytest.approx(100.0) and two['rouge1'] == pytest.approx(100.0)
  assert one['bleu'] < 100 and one['rouge1'] == pytest.approx(50.0)
