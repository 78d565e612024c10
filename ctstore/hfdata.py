"""Hugging Face ``datasets`` in and out, without importing ``datasets``.

In: ``ctstore tokenize DIR`` accepts

* a directory written by ``Dataset.save_to_disk``: ``state.json`` lists the
  Arrow files (``data-00000-of-0000N.arrow``, Arrow IPC *stream* format) and
  ``dataset_info.json`` the features; the text is the ``--column`` (default
  ``text``) of every record batch, read through a memory map;
* a directory written by ``DatasetDict.save_to_disk``: ``dataset_dict.json``
  lists the splits, each a directory as above; every split is read, in the
  listed order (pass ``DIR/train`` for one split);
* a Parquet dataset directory (``Dataset.to_parquet`` files, a Hub snapshot with
  ``data/*.parquet``): only the ``.parquet`` files are read when the other files
  are metadata (``README.md``, ``*.json``, ``*.yaml``), instead of tokenizing
  the README as text.

Out: a tokens artifact's shards are plain Parquet (``doc_id: uint64``,
``tokens: large_list<uint32>``); :func:`tokens_data_files` lists them for
``datasets.load_dataset("parquet", data_files=...)``.
"""

from __future__ import annotations

import json
import os

from .errors import CtstoreError

__all__ = ["hf_dataset_files", "read_arrow", "tokens_data_files"]

METADATA_SUFFIXES = (".md", ".json", ".yaml", ".yml", ".txt.lock", ".lock")


def _load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CtstoreError(f"{path}: not a readable datasets metadata file ({exc})") from None


def _saved_split_files(directory: str) -> list[str]:
    state = _load_json(os.path.join(directory, "state.json"))
    entries = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(entries, list) or not entries:
        raise CtstoreError(f"{directory}/state.json: no _data_files (not a Dataset.save_to_disk directory?)")
    files = []
    for entry in entries:
        name = entry.get("filename") if isinstance(entry, dict) else None
        path = os.path.join(directory, str(name))
        if not name or os.path.basename(str(name)) != name or not os.path.isfile(path):
            raise CtstoreError(f"{directory}/state.json: data file {name!r} is missing")
        files.append(path)
    return files


def _parquet_dataset_files(directory: str) -> list[str] | None:
    parquet, other = [], []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith("."):
                continue
            (parquet if name.endswith(".parquet") else other).append(os.path.join(root, name))
    if parquet and all(name.lower().endswith(METADATA_SUFFIXES) or os.path.basename(name).upper().startswith(
            "LICENSE") for name in other):
        return sorted(parquet)
    return None


def hf_dataset_files(directory: str) -> list[str] | None:
    """The data files of a Hugging Face dataset directory, or None if it is not one."""
    if os.path.isfile(os.path.join(directory, "dataset_dict.json")):
        splits = _load_json(os.path.join(directory, "dataset_dict.json")).get("splits")
        if not isinstance(splits, list) or not splits:
            raise CtstoreError(f"{directory}/dataset_dict.json: no splits listed")
        return [f for split in splits for f in _saved_split_files(os.path.join(directory, str(split)))]
    if os.path.isfile(os.path.join(directory, "state.json")) and \
            os.path.isfile(os.path.join(directory, "dataset_info.json")):
        return _saved_split_files(directory)
    return _parquet_dataset_files(directory)


def _record_batches(path: str):
    import pyarrow as pa

    source = pa.memory_map(path, "r")
    try:
        reader = pa.ipc.open_stream(source)  # what save_to_disk writes
    except pa.ArrowInvalid:
        source.seek(0)
        reader = pa.ipc.open_file(source)  # Arrow IPC file format (Feather v2)
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches))
    return reader.schema, iter(reader)


def read_arrow(path: str, column: str):
    """Yield the non-null strings of ``column`` in an Arrow IPC file (stream or file format)."""
    import pyarrow as pa

    try:
        schema, batches = _record_batches(path)
    except (OSError, pa.ArrowException) as exc:
        raise CtstoreError(f"{path}: not a readable Arrow file ({exc})") from None
    if column not in schema.names:
        raise CtstoreError(f"{path}: no column {column!r} (columns: {', '.join(schema.names)}; use --column)")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CtstoreError(f"{path}: column {column!r} has type {kind}, not string")
    index = schema.get_field_index(column)
    try:
        for batch in batches:
            yield from (v for v in batch.column(index).to_pylist() if v is not None)
    except (OSError, pa.ArrowException) as exc:
        raise CtstoreError(f"{path}: corrupt Arrow data ({exc})") from None


def tokens_data_files(tokens) -> list[str]:
    """URLs of a tokens artifact's Parquet shards, for ``datasets.load_dataset("parquet", data_files=...)``."""
    if tokens.kind != "tokens":
        raise CtstoreError(f"{tokens}: is a {tokens.kind} artifact, not tokens")
    return [f"{tokens.url}/{shard['name']}" for shard in tokens.manifest["shards"]]
