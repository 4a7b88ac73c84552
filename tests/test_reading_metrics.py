"""The reading verdict (data_engine/reading_metrics.py) cannot be fooled by layout.

Fixed predictors with known answers, no model: a layout-only predictor (right lines and word
counts, wrong words) is not judged as reading, even where its CER alone passes the wrong-page
check; a perfect reader is; a constant output and an empty output are not. The wrong-page
control pairs pages by a fixed derangement (no page against itself, same pairs every call).
"""

from __future__ import annotations

import random

import pytest

from data_engine.metrics import corpus_cer
from data_engine.reading_metrics import (chance_threshold, derangement, reading_lines, reading_scores, text_scores,
                                         word_hits)

RHYMES = "bat cat fat hat mat pat rat sat".split()  # one letter tells them apart
VOCAB = "the of and reading page model letter word font line token vision layout paper".split()


def pages(words: list[str], n: int, seed: int, lines=(1, 4), per_line=(1, 6)) -> list[str]:
    rng = random.Random(seed)
    return ["\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(*per_line)))
                      for _ in range(rng.randint(*lines))) for _ in range(n)]


def layout_only(refs: list[str], words: list[str], seed: int) -> list[str]:
    """Right number of lines and words per line, each word guessed from the vocabulary."""
    rng = random.Random(seed)
    return ["\n".join(" ".join(rng.choice(words) for _ in ln.split()) for ln in r.splitlines()) for r in refs]


def test_word_and_first_letter_hits_in_place_by_hand():
    assert word_hits("the cat\nsat on", "the cat\nsat") == (3, 3, 3)
    assert word_hits("the bat\nmat", "the cat\nsat on") == (1, 1, 4)  # 'sat'/'mat' differ at the 1st letter
    assert word_hits("the cot\nsit", "the cat\nsat on") == (1, 3, 4)  # right first letters, wrong words
    assert word_hits("cat the", "the cat") == (0, 0, 2)  # in place: order matters
    assert word_hits("the\ncat", "the cat") == (1, 1, 2)  # a word moved to another line is not in place
    assert word_hits("", "the cat") == (0, 0, 2) and word_hits("x", "") == (0, 0, 0)
    assert word_hits("The", "the") == (0, 0, 1)  # case-sensitive
    s = text_scores(["the cat", ""], ["the cat", "sat on"])
    assert (s["word_accuracy"], s["first_letter_accuracy"], s["words"]) == (0.5, 0.5, 4)
    assert s["cer"] == pytest.approx(corpus_cer([("the cat", "the cat"), ("sat on", "")]))


def test_derangement_has_no_fixed_point_and_is_deterministic():
    for n in range(2, 60):
        for seed in (0, 1, 7):
            p = derangement(n, seed)
            assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n)), (n, seed, p)
            assert derangement(n, seed) == p
    assert derangement(40, 0) != derangement(40, 1)
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1)


def test_wrong_page_control_scores_each_prediction_against_another_page():
    refs = [f"w{i}a w{i}b\nw{i}c" for i in range(12)]  # every word unique to its page
    s = reading_scores(refs, refs, seed=3)
    perm = derangement(12, 3)
    assert s["wrong_page"]["word_accuracy"] == 0.0  # never scored against its own page
    assert s["wrong_page"]["cer"] == pytest.approx(corpus_cer((refs[perm[i]], refs[i]) for i in range(12)))
    assert s["wrong_page"]["derangement_seed"] == 3
    assert reading_scores(refs, refs, seed=3) == s  # deterministic


def test_layout_only_predictor_is_not_reading_even_when_its_cer_passes():
    refs = pages(RHYMES, 30, seed=0)
    s = reading_scores(layout_only(refs, RHYMES, seed=1), refs)
    # the words rhyme, so the layout and the vocabulary alone give a CER under half the wrong-page CER ...
    assert s["checks"]["cer_vs_wrong_page"], s
    # ... but the words in place are at chance, and the verdict says so
    assert not s["checks"]["words_above_chance"] and not s["reads"], s
    assert s["word_accuracy"] < s["chance"]["threshold"] and "does NOT read" in s["verdict"]


def test_layout_only_predictor_with_free_vocabulary_is_not_reading():
    refs = pages(VOCAB, 40, seed=2)
    s = reading_scores(layout_only(refs, VOCAB, seed=3), refs)
    assert not s["reads"] and not s["checks"]["cer_vs_wrong_page"] and not s["checks"]["words_above_chance"], s


def test_perfect_reader_reads_and_a_reader_with_errors_too():
    refs = pages(VOCAB, 40, seed=4)
    s = reading_scores(refs, refs, blank_preds=[""] * 40, loss_ratio=0.3)
    assert s["reads"] and s["cer"] == 0.0 and s["word_accuracy"] == 1.0 and s["first_letter_accuracy"] == 1.0
    assert s["blank"]["cer"] == 1.0 and s["loss_ratio"] == 0.3
    rng = random.Random(5)  # one word in five replaced
    noisy = ["\n".join(" ".join(rng.choice(VOCAB) if rng.random() < 0.2 else w for w in ln.split())
                       for ln in r.splitlines()) for r in refs]
    assert reading_scores(noisy, refs)["reads"]


def test_constant_and_blank_outputs_are_not_reading():
    refs = pages(VOCAB, 40, seed=6)
    train = pages(VOCAB, 200, seed=7) + ["the of\nand"] * 5  # the most frequent training label
    s = reading_scores(["the of\nand"] * 40, refs, train_labels=train)
    assert s["constant"]["label"] == "the of\nand" and s["constant"]["source"] == "training labels"
    assert s["word_accuracy"] == s["constant"]["word_accuracy"] and not s["reads"], s
    assert reading_scores(refs, refs)["constant"]["source"] == "evaluation references"
    empty = reading_scores([""] * 40, refs)
    assert empty["cer"] == 1.0 and empty["word_accuracy"] == 0.0 and not empty["reads"]


def test_loss_ratio_never_decides_and_chance_threshold_by_hand():
    refs = pages(VOCAB, 20, seed=8)
    assert not reading_scores([""] * 20, refs, loss_ratio=0.01)["reads"]
    assert chance_threshold(0.0, 100) == (0.10, 0.10)
    assert chance_threshold(0.3, 1000) == (pytest.approx(0.3), pytest.approx(0.6))  # at least double
    m, t = chance_threshold(0.05, 20)  # few words: 3 standard errors = 0.146
    assert m == pytest.approx(3 * (0.05 * 0.95 / 20) ** 0.5) and t == pytest.approx(0.05 + m)
    one = reading_scores(["a"], ["a"])
    assert one["wrong_page"] is None and not one["reads"] and "at least 2 pages" in one["verdict"]
    with pytest.raises(ValueError, match="predictions"):
        reading_scores(["a"], ["a", "b"])
    table = "\n".join(reading_lines(reading_scores(refs, refs, blank_preds=[""] * 20, loss_ratio=0.4),
                                    extra=[("before training", reading_scores([""] * 20, refs))]))
    for words in ("blank pages", "wrong-page reference", "constant output", "loss ratio", "READS", "before training"):
        assert words in table
