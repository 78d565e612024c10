"""The schema every ``manifest.json`` is checked against when it is read (docs/reliability.md, "paths").

A manifest is data that anyone with write access to the workspace can edit, so
nothing in it is trusted as a path. :func:`problem` returns why a manifest
cannot be used (or None), and :meth:`ctstore.workspace.Workspace.read_manifest`
turns that into an *unreadable* artifact: ``ls`` lists it on its own line,
``show``/``verify``/the stages fail on it in one line (exit 2).

The rules:

* every name of a file inside the artifact (``files`` keys, ``shards[].name``,
  a report's ``report``) is a plain relative name: not empty, not absolute, no
  ``..`` or ``.`` component, no backslash or NUL; a shard name or report name
  has no ``/`` at all;
* every input (``inputs`` values, possibly lists) is a full fingerprint,
  ``[0-9a-f]{20}`` -- a unique prefix is accepted only on the command line;
* fields ctstore reads have the types it reads them as (``files`` values
  ``"<hex digest>:<size>"``, ``created`` a finite number of seconds from 1970 to 9999, counts non-negative
  integers, losses numbers or null).

Fields not listed here are not checked (a newer ctstore may add some). Opening
a named file is a separate check (:func:`ctstore.integrity.open_regular`):
inside the artifact's real directory, no symlink, a regular file.
"""

from __future__ import annotations

import math
import re

__all__ = ["FINGERPRINT", "is_fingerprint", "problem", "relative_name_problem"]

FINGERPRINT = re.compile(r"[0-9a-f]{20}")
_FILE_HASH = re.compile(r"[0-9a-f]{1,128}:[0-9]{1,20}")


LATEST_TIMESTAMP = 253_402_300_800  # 10000-01-01T00:00:00Z: time.localtime and strftime handle every earlier second

def is_fingerprint(value: object) -> bool:
    return isinstance(value, str) and FINGERPRINT.fullmatch(value) is not None


def relative_name_problem(name: object, plain: bool = False) -> str | None:
    """Why ``name`` is not a safe name inside an artifact directory (``plain``: no ``/`` either), or None."""
    if not isinstance(name, str) or not name:
        return "is not a non-empty string"
    if "\x00" in name or "\\" in name:
        return "contains a NUL or a backslash"
    if name.startswith("/"):
        return "is an absolute path"
    parts = name.split("/")
    if plain and len(parts) > 1:
        return "contains a path separator"
    if any(part in ("", ".", "..") for part in parts):
        return "is not a plain relative name (empty, '.' or '..' component)"
    return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _inputs(value: object, where: str = "inputs") -> str | None:
    if isinstance(value, str):
        return None if is_fingerprint(value) else f"{where} is not a fingerprint ([0-9a-f]{{20}})"
    if isinstance(value, list):
        for i, v in enumerate(value):
            if (p := _inputs(v, f"{where}[{i}]")) is not None:
                return p
        return None
    return f"{where} is {_type(value)}, not a fingerprint or a list of them"


def _files(files: object) -> str | None:
    if not isinstance(files, dict):
        return f"files is {_type(files)}, not an object of name: \"hash:size\""
    for name, value in files.items():
        if (p := relative_name_problem(name)) is not None:
            return f"files key {name!r} {p}"
        if not isinstance(value, str) or _FILE_HASH.fullmatch(value) is None:
            return f"files[{name!r}] is not \"hash:size\""
    return None


def _shards(shards: object) -> str | None:
    if not isinstance(shards, list):
        return f"shards is {_type(shards)}, not a list"
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict):
            return f"shards[{i}] is {_type(shard)}, not an object"
        if (p := relative_name_problem(shard.get("name"), plain=True)) is not None:
            return f"shards[{i}].name {p}"
        for key in ("tokens", "docs"):
            if key in shard and not _is_int(shard[key]):
                return f"shards[{i}].{key} is not a non-negative integer"
        groups = shard.get("row_groups", [])
        if not isinstance(groups, list) or not all(_is_int(g) for g in groups):
            return f"shards[{i}].row_groups is not a list of non-negative integers"
    return None


def _shard_totals(manifest: dict) -> str | None:
    """The shard table must add up: row groups to each shard's tokens, shards to the artifact's tokens."""
    shards = manifest["shards"]
    for i, shard in enumerate(shards):
        if "tokens" in shard and shard.get("row_groups") and sum(shard["row_groups"]) != shard["tokens"]:
            return f"shards[{i}].row_groups add up to {sum(shard['row_groups'])}, not its {shard['tokens']} tokens"
    total = manifest.get("tokens")
    if _is_int(total) and all("tokens" in s for s in shards) and sum(s["tokens"] for s in shards) != total:
        return f"shards hold {sum(s['tokens'] for s in shards)} tokens, the manifest says {total}"
    return None


_INTEGERS = ("n_vocab", "tokens", "docs", "steps", "dim", "v_eff", "model_vocab", "eval_block", "eval_tokens")
_NUMBERS_OR_NULL = ("final_val_loss", "final_val_ppl", "final_val_ppl_known", "final_val_unk_rate")


def problem(manifest: dict, kind: str) -> str | None:
    """Why ``manifest`` (already a JSON object) of an artifact of ``kind`` cannot be used, or None."""
    if "created" in manifest:
        created = manifest["created"]
        if not _is_number(created) or not math.isfinite(created):
            return f"created is {_type(created)}, not a timestamp"
        if not 0 <= created < LATEST_TIMESTAMP:
            return f"created is {created!r}, not a timestamp between 1970 and 9999"
    for key in ("params",):
        if key in manifest and not isinstance(manifest[key], dict):
            return f"{key} is {_type(manifest[key])}, not an object"
    if "inputs" in manifest:
        inputs = manifest["inputs"]
        if not isinstance(inputs, dict):
            return f"inputs is {_type(inputs)}, not an object"
        for name, value in inputs.items():
            if (p := _inputs(value, f"inputs.{name}")) is not None:
                return p
    if "files" in manifest and (p := _files(manifest["files"])) is not None:
        return p
    if "shards" in manifest and (p := _shards(manifest["shards"])) is not None:
        return p
    if "shards" in manifest and (p := _shard_totals(manifest)) is not None:
        return p
    if kind == "report" and "report" in manifest:
        if (p := relative_name_problem(manifest["report"], plain=True)) is not None:
            return f"report {p}"
    for key in _INTEGERS:
        if key in manifest and not _is_int(manifest[key]):
            return f"{key} is {_type(manifest[key])}, not a non-negative integer"
    for key in _NUMBERS_OR_NULL:
        if manifest.get(key) is not None and not _is_number(manifest[key]):
            return f"{key} is {_type(manifest[key])}, not a number"
    for key in ("tokenizer", "ctstore_version", "path"):
        if manifest.get(key) is not None and not isinstance(manifest[key], str):
            return f"{key} is {_type(manifest[key])}, not a string"
    return None


def _type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)
