"""A faster path through a BERT WordPiece tokenizer for plain ASCII text, with the same ids.

On a 2-core machine the Rust tokenizer spends ~60 us on a 25-word sentence
(its normalizer and pre-tokenizer track character alignments we never use),
more than reading and checking the row. For the common case -- a
``BertNormalizer`` + ``BertPreTokenizer`` + ``WordPiece`` tokenizer (BERT,
MiniLM, ...) and a text of printable ASCII -- the pipeline reduces to:
lowercase (if the normalizer does), split on spaces and on each ASCII
punctuation character, and look every word up in a word -> WordPiece ids
cache filled by the tokenizer's own model. Anything else (a non-ASCII or
non-printable character, text containing an added token such as ``[SEP]``,
another kind of tokenizer) goes to the tokenizer itself, so the ids are
always the tokenizer's; tests/data/test_fasttok.py checks equality on the course
files and on random text built to hit the edge cases.

Truncation follows the tokenizer's ``longest_first`` (tokenizers'
truncation.rs): a single text keeps its first ``max_length - 2`` tokens; a
pair, with n1 <= n2 the shorter and longer lengths and m = max_length - 3,
keeps n1 and max(n1, m - n1) tokens, or m // 2 and m // 2 + m % 2 when
that is still too long.
"""

from __future__ import annotations

import json
import re

# ASCII punctuation as BERT counts it: every printable non-alphanumeric, non-space character
_PUNCT = r"!-/:-@\[-`{-~"
_WORDS = re.compile(rf"[^ {_PUNCT}]+|[{_PUNCT}]")


class FastBertEncoder:
    """``encode(texts, pairs, max_length) -> (ids, type_ids)`` lists, equal to the tokenizer's."""

    def __init__(self, tokenizer, lowercase: bool, cls_id: int, sep_id: int, added: list[str]):
        self.tokenizer, self.lowercase = tokenizer, lowercase
        self.cls, self.sep = cls_id, sep_id
        # any added token, in any case: a superset of what the tokenizer would match, so safe
        self.added = re.compile("|".join(map(re.escape, added)), re.IGNORECASE) if added else None
        self.model = tokenizer.backend_tokenizer.model
        self.words: dict[str, list[int]] = {}

    @classmethod
    def for_tokenizer(cls, tokenizer) -> "FastBertEncoder | None":
        """The fast path if ``tokenizer`` is a BERT WordPiece tokenizer it reproduces, else None."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        config = json.loads(backend.to_str())
        normalizer, pre, model = config.get("normalizer") or {}, config.get("pre_tokenizer") or {}, config["model"]
        post = config.get("post_processor") or {}
        if normalizer.get("type") != "BertNormalizer" or not normalizer.get("clean_text") \
                or pre.get("type") != "BertPreTokenizer" or model.get("type") != "WordPiece":
            return None
        ids = _bert_template(post)
        if ids is None:
            return None
        added = [token["content"] for token in config.get("added_tokens", [])]
        return cls(tokenizer, bool(normalizer.get("lowercase")), *ids, added)

    def _word(self, word: str) -> list[int]:
        ids = self.words.get(word)
        if ids is None:
            ids = self.words[word] = [token.id for token in self.model.tokenize(word)]
        return ids

    def _plain(self, text: str) -> bool:
        return text.isascii() and text.isprintable() and not (self.added and self.added.search(text))

    def _pieces(self, text: str) -> list[int]:
        if self.lowercase:
            text = text.lower()
        known, learn = self.words.get, self._word
        return [i for w in _WORDS.findall(text) for i in (known(w) or learn(w))]

    def encode(self, texts: list[str], pairs: list[str] | None, max_length: int):
        ids: list[list[int] | None] = []
        types: list[list[int] | None] = []
        slow: list[int] = []
        cls, sep = self.cls, self.sep
        for i, text in enumerate(texts):
            pair = pairs[i] if pairs is not None else None
            if not self._plain(text) or (pair is not None and not self._plain(pair)):
                slow.append(i)
                ids.append(None)
                types.append(None)
                continue
            a = self._pieces(text)
            if pair is None:
                a = a[:max_length - 2]
                ids.append([cls, *a, sep])
                types.append([0] * (len(a) + 2))
                continue
            b = self._pieces(pair)
            n1, n2 = _longest_first(len(a), len(b), max_length - 3)
            a, b = a[:n1], b[:n2]
            ids.append([cls, *a, sep, *b, sep])
            types.append([0] * (len(a) + 2) + [1] * (len(b) + 1))
        if slow:  # the rest through the tokenizer itself
            encoded = self.tokenizer([texts[i] for i in slow], [pairs[i] for i in slow] if pairs is not None
                                     else None, truncation=True, max_length=max_length,
                                     return_token_type_ids=True, return_attention_mask=False)
            for j, i in enumerate(slow):
                ids[i], types[i] = encoded["input_ids"][j], encoded["token_type_ids"][j]
        return ids, types


def _longest_first(n1: int, n2: int, room: int) -> tuple[int, int]:
    if n1 + n2 <= room:
        return n1, n2
    swap = n1 > n2
    if swap:
        n1, n2 = n2, n1
    n2 = n1 if n1 > room else max(n1, room - n1)
    if n1 + n2 > room:
        n1 = room // 2
        n2 = n1 + room % 2
    return (n2, n1) if swap else (n1, n2)


def _bert_template(post: dict) -> tuple[int, int] | None:
    """(cls id, sep id) if the post-processor is BERT's [CLS] A [SEP] (B [SEP]) with types 0/1."""
    if post.get("type") == "BertProcessing":
        return post["cls"][1], post["sep"][1]
    if post.get("type") != "TemplateProcessing":
        return None
    def shape(items):
        return [(("S", i["SpecialToken"]["id"]) if "SpecialToken" in i else ("A", i["Sequence"]["id"]),
                 (i.get("SpecialToken") or i.get("Sequence"))["type_id"]) for i in items]
    single, pair = shape(post["single"]), shape(post["pair"])
    if len(single) != 3 or len(pair) != 5:
        return None
    cls_name, sep_name = single[0][0][1], single[2][0][1]
    want_single = [(("S", cls_name), 0), (("A", "A"), 0), (("S", sep_name), 0)]
    want_pair = want_single + [(("A", "B"), 1), (("S", sep_name), 1)]
    if single != want_single or pair != want_pair:
        return None
    specials = post["special_tokens"]
    if len(specials[cls_name]["ids"]) != 1 or len(specials[sep_name]["ids"]) != 1:
        return None
    return specials[cls_name]["ids"][0], specials[sep_name]["ids"][0]
