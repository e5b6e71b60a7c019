"""The ASCII fast path through a BERT tokenizer gives exactly the tokenizer's ids and types."""

from __future__ import annotations

import random
import string

import pytest

from mtbert.data.fasttok import FastBertEncoder, _longest_first


@pytest.fixture
def tok(tiny_encoder):
    return tiny_encoder.tokenizer


@pytest.fixture
def fast(tok):
    encoder = FastBertEncoder.for_tokenizer(tok)
    assert encoder is not None and encoder.lowercase
    return encoder


def reference(tok, texts, pairs, max_length):
    out = tok(texts, pairs, truncation=True, max_length=max_length, return_token_type_ids=True,
              return_attention_mask=False)
    return out["input_ids"], out["token_type_ids"]


def random_text(rng: random.Random) -> str:
    """Words, punctuation runs, digits, capitals, very long words, doubled spaces, now and then an
    added token, a tab or a non-ASCII character (those take the slow path)."""
    pieces = []
    for _ in range(rng.randint(0, 40)):
        kind = rng.random()
        if kind < 0.02:  # these send the text down the slow path
            pieces.append(rng.choice(["naïve", "[SEP]", "[mask]", "tab\there", "ｆｕｌｌ"]))
        elif kind < 0.55:
            pieces.append(rng.choice(["the", "Movie", "un", "affable", "don't", "U.S.", "e-mail", "x" * 101,
                                      "#1", "$5.00", "ok", "42nd", "[sep", "mask]", "SEP"]))
        elif kind < 0.8:
            pieces.append("".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(1, 14))))
        else:
            pieces.append("".join(rng.choices(string.punctuation, k=rng.randint(1, 4))))
    return (" " * rng.randint(1, 2)).join(pieces)


@pytest.mark.parametrize("max_length", [8, 16, 128])
def test_random_single_texts_match_the_tokenizer(tok, fast, max_length):
    rng = random.Random(max_length)
    texts = [random_text(rng) for _ in range(600)]
    plain = sum(map(fast._plain, texts))
    assert 150 < plain < 550  # both paths are taken
    assert fast.encode(texts, None, max_length) == reference(tok, texts, None, max_length)


@pytest.mark.parametrize("max_length", [8, 11, 32, 128])
def test_random_pairs_match_the_tokenizer_truncation(tok, fast, max_length):
    rng = random.Random(100 + max_length)
    texts = [random_text(rng) for _ in range(600)]
    pairs = [random_text(rng) for _ in range(600)]
    assert fast.encode(texts, pairs, max_length) == reference(tok, texts, pairs, max_length)


def test_course_files_match_the_tokenizer(tok, fast, data_dir):
    import csv
    for name, columns in [("ids-sst-train.csv", ["sentence"]), ("quora-dev.csv", ["sentence1", "sentence2"]),
                          ("sts-train.csv", ["sentence1", "sentence2"])]:
        with open(data_dir / name, encoding="utf-8", newline="") as fp:
            rows = list(csv.DictReader(fp, delimiter="\t"))[:4000]
        texts = [r[columns[0]].strip() for r in rows]
        pairs = [r[columns[1]].strip() for r in rows] if len(columns) == 2 else None
        assert fast.encode(texts, pairs, 128) == reference(tok, texts, pairs, 128), name


def test_longest_first_by_hand():
    assert _longest_first(3, 4, 10) == (3, 4)    # fits
    assert _longest_first(3, 20, 10) == (3, 7)   # only the longer is cut
    assert _longest_first(20, 3, 10) == (7, 3)
    assert _longest_first(9, 12, 10) == (5, 5)   # both cut to half
    assert _longest_first(9, 12, 11) == (5, 6)


def test_other_tokenizers_get_no_fast_path():
    class NoBackend:
        pass
    assert FastBertEncoder.for_tokenizer(NoBackend()) is None
