"""Stage ``tokenize``: text / JSONL / Parquet corpora → ``tokens`` artifact.

Inputs are files, directories (searched recursively) and glob patterns, with
optional ``.gz .bz2 .xz .zst`` compression. Documents:

* ``.txt`` (and any other suffix): ``split="paragraph"`` (default; blank-line
  separated), ``"line"`` or ``"file"``;
* ``.jsonl``: one JSON object per line, the string in ``field`` (default ``text``);
* ``.parquet``: the string column ``column`` (default ``text``);
* a Hugging Face datasets directory (``save_to_disk`` or Parquet): see :mod:`ctstore.hfdata`.

Invalid UTF-8 is decoded with U+FFFD and the replaced bytes are counted in the
manifest; ``strict=True`` makes it an error. Special-token text such as
``<|endoftext|>`` is encoded as ordinary text (``encode_ordinary``).

The package, in the order data flows through it:

* :mod:`.inputs`: files named by paths, directories and patterns, de-duplicated by
  identity, non-regular files refused by type; content hashes for the fingerprint;
* :mod:`.decode`: decompression and incremental UTF-8 decoding in blocks;
* :mod:`.readers`: the documents of one file, by format, checked against its hash;
* :mod:`.encode`: long documents cut where tokens do not change, batches encoded
  on threads, tokens written as shards;
* :mod:`.stage`: :class:`TokenizeParams`, :func:`tokenize_corpus` and ``STAGE``.
"""

from .encode import safe_cut_rule
from .inputs import expand_inputs
from .readers import iter_documents
from .stage import STAGE, TokenizeParams, tokenize_corpus

__all__ = ["TokenizeParams", "tokenize_corpus", "expand_inputs", "iter_documents", "safe_cut_rule", "STAGE"]
