"""A Hugging Face ``tokenizers`` BPE equal to a tiktoken encoding, for the exported model (issue 17 §5).

tiktoken stores only ranks: ``token bytes -> rank``. Its encoder splits text with
a regex, then, inside each piece, repeatedly merges the adjacent pair whose
concatenation has the lowest rank (a piece that is itself a token is taken
whole). That is byte-level BPE whose merge list is implied by the ranks: the
token of rank r is the merge of the two parts that BPE, restricted to the ranks
below r, leaves of its bytes (:func:`recover_merges`). So a ``tokenizers`` BPE
with

* the same split regex (``Split``, isolated), then GPT-2's byte-to-character
  alphabet (``ByteLevel``, no prefix space, no regex of its own),
* vocabulary = every token in that alphabet, merges in rank order,
  ``ignore_merges=True`` (a piece found whole in the vocabulary is one token),
* a ``ByteLevel`` decoder,

encodes every text to tiktoken's ``encode_ordinary`` ids (special tokens are left
out, as ctstore's tokenize stage never produces them).

**Compact vocabularies.** A model built on the V_model most frequent tokens maps
every other tokenizer id to its unknown token, the last model id. A BPE
tokenizer cannot send many tokens to one id (its merges are keyed by the ids of
the pair), so :func:`hf_ids` gives the kept tokens their model ids, ``⟨unk⟩`` the
unknown id, and the dropped tokens ids ``V_model, V_model + 1, ...`` in tokenizer
order. The export appends one embedding row per dropped token, each a copy of
the unknown token's row (so the model sees ``⟨unk⟩`` exactly as ctstore does),
and ``generation_config.json`` suppresses those ids (``suppress_tokens``), so
sampling sees the same distribution as ``ctstore generate``. The cost: the
exported embedding has a row per tokenizer token.
"""

from __future__ import annotations

import functools
import re

import numpy as np

__all__ = ["UNK_TOKEN", "byte_alphabet", "recover_merges", "hf_ids", "build_tokenizer", "tokenizer_config"]

UNK_TOKEN = "⟨unk⟩"


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> tuple[str, ...]:
    """The character standing for each byte: printable Latin-1 bytes stand for themselves, the others
    (controls, space, 0x7f-0xa0, 0xad) for the characters from U+0100 on, in byte order (GPT-2's choice,
    which ``tokenizers``' ByteLevel uses)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return tuple(chars)


def as_text(token: bytes) -> str:
    alphabet = byte_alphabet()
    return "".join(alphabet[b] for b in token)


def _bpe_below(token: bytes, rank: int, ranks: dict[bytes, int]) -> list[bytes]:
    """The parts BPE leaves of ``token``'s bytes when only tokens ranked below ``rank`` may be formed."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, where = rank, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1], rank)
            if r < best:
                best, where = r, i
        if where < 0:
            break
        parts[where:where + 2] = [parts[where] + parts[where + 1]]
    return parts


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list, in rank order, implied by tiktoken's ranks (one merge per multi-byte token).

    A token that BPE over the lower ranks cannot reduce to two parts is unreachable by tiktoken's encoder
    as a merge (only as a whole piece, which ``ignore_merges`` covers); it gets no merge.
    """
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = _bpe_below(token, rank, ranks)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


@functools.lru_cache(maxsize=4)
def _merges_cached(key: tuple, ranks_items: tuple) -> tuple:
    return tuple(recover_merges(dict(ranks_items)))


def merges_of(enc, ranks: dict[bytes, int]) -> tuple:
    """:func:`recover_merges` of an encoding, computed once per process (seconds for 100K tokens)."""
    items = tuple(sorted(ranks.items(), key=lambda kv: kv[1]))
    return _merges_cached((enc.name, enc._pat_str, hash(items)), items)


def mergeable_ranks(enc) -> dict[bytes, int]:
    """``token bytes -> rank`` of a tiktoken encoding, special tokens left out."""
    ranks = getattr(enc, "_mergeable_ranks", None)
    if ranks is not None:
        return dict(ranks)
    special = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    out = {}
    for i in range(enc.n_vocab):
        if i not in special:
            try:
                out[enc.decode_single_token_bytes(i)] = i
            except KeyError:  # a gap in the ranks
                pass
    return out


def hf_ids(ranks: dict[bytes, int], vocab_map: np.ndarray | None, model_vocab: int) -> tuple[dict[str, int], int]:
    """``(vocabulary text -> id, number of ids)``: tokenizer ids for a full vocabulary; for a compact one,
    model ids for kept tokens and ⟨unk⟩, then one id per dropped token from ``model_vocab`` on."""
    if vocab_map is None:
        vocab = {as_text(token): rank for token, rank in ranks.items()}
        return vocab, max(model_vocab, max(ranks.values()) + 1)
    unk = model_vocab - 1
    vocab, next_id = {UNK_TOKEN: unk}, model_vocab
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        model_id = int(vocab_map[rank]) if rank < len(vocab_map) else unk
        if model_id != unk:
            vocab[as_text(token)] = model_id
        else:
            vocab[as_text(token)] = next_id
            next_id += 1
    return vocab, next_id


def onig_pattern(pattern: str) -> str:
    """tiktoken's split regex for ``tokenizers`` (Oniguruma). Oniguruma reads ``{n,m}+`` not as a possessive
    interval but as the interval repeated (``\\p{N}{1,3}+`` would take any run of digits where tiktoken takes
    at most 3); at the end of an alternative, as in tiktoken's patterns, possessive and greedy match alike, so
    the ``+`` is dropped. The other possessive forms (``?+``, ``++``, ``*+``) mean the same in both."""
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def build_tokenizer(enc, vocab_map: np.ndarray | None, model_vocab: int):
    """``(tokenizers.Tokenizer, number of ids)`` encoding like ``enc.encode_ordinary`` into model ids."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    ranks = mergeable_ranks(enc)
    vocab, n_ids = hf_ids(ranks, vocab_map, model_vocab)
    merges = [(as_text(a), as_text(b)) for a, b in merges_of(enc, ranks)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True, fuse_unk=False,
                                     byte_fallback=False, unk_token=UNK_TOKEN if vocab_map is not None else None))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(onig_pattern(enc._pat_str)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    if vocab_map is not None:
        tokenizer.add_special_tokens([AddedToken(UNK_TOKEN, special=True, normalized=False)])
    return tokenizer, n_ids


def tokenizer_config(compact: bool, block_size: int) -> dict:
    """``tokenizer_config.json``: a fast tokenizer from ``tokenizer.json``, no BOS/EOS (the model has none)."""
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
              "clean_up_tokenization_spaces": False, "add_prefix_space": False}
    if compact:
        config["unk_token"] = UNK_TOKEN
    return config
