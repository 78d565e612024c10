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

from .errors import CtstoreError, one_line
from .log import log, set_quiet
from .units import MEMORY, format_bytes, parse_memory

__all__ = ["main"]


def _common(parser: argparse.ArgumentParser, compute: bool = True) -> None:
    parser.add_argument("--workspace", "-w", default=None,
                        help="artifact workspace: a path or fsspec URL (default $CTSTORE_HOME or ./ctstore-data)")
    parser.add_argument("--scratch", default=None,
                        help="where jobs' spills and blocks go: a path every worker sees or an fsspec URL "
                             "(default $CTSTORE_SCRATCH, else <workspace>/tmp)")
    parser.add_argument("--json", action="store_true", help="print the result manifest as JSON on stdout")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")
    if compute:
        parser.add_argument("--force", action="store_true", help="recompute even if the artifact exists")
        parser.add_argument("--memory", default="4GB", type=MEMORY,
                            help="budget for the whole process tree (default 4GB)")
        parser.add_argument("--scheduler", default=None,
                            help="'local' (LocalCluster, default), 'sync' (in-process) or a scheduler address")


class _Parser(argparse.ArgumentParser):
    """argparse with ctstore's error form: one line, ``ctstore: error: <input>: <problem>``, status 2."""

    def error(self, message: str):
        if message.startswith("argument "):
            name, _, problem = message[len("argument "):].partition(": ")
            message = f"{name.split('/')[0]}: {problem}"
        self.exit(2, f"ctstore: error: {one_line(message, 2000)}\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``ctstore`` parser; with ``argv``, only the subcommand it names is built from its stage module.

    Stage modules import torch, dask, zarr or pyarrow (seconds). ``main`` passes
    its arguments, so ``ctstore --help``, ``--version``, ``ls``, ``show``,
    ``verify`` and ``gc`` import none of them and the subcommand that runs
    imports only its own. Without ``argv`` every subcommand is built.
    """
    p = _Parser(prog="ctstore", description=__doc__.splitlines()[0])
    from . import __version__

    p.add_argument("--version", action="version", version=f"ctstore {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from . import stages

    only = None if argv is None else {next((a for a in argv if not a.startswith("-")), None)}
    stages.add_parsers(sub, _common, only)

    s = sub.add_parser("ls", help="list complete artifacts with lineage and size")
    s.add_argument("--kind", default=None, help="only this kind: tokens, counts, embeddings, model(s), run(s) "
                                               "or report(s)")
    _common(s, compute=False)

    s = sub.add_parser("show", help="print one artifact's manifest")
    s.add_argument("ref", help="fingerprint, unique prefix, or kind/fingerprint")
    _common(s, compute=False)

    s = sub.add_parser("verify", help="check every file of an artifact (and of its inputs) against the hashes "
                                      "in their manifests")
    s.add_argument("ref", help="fingerprint, unique prefix, or kind/fingerprint")
    s.add_argument("--shallow", action="store_true",
                   help="check only this artifact, not the inputs it was computed from")
    _common(s, compute=False)

    s = sub.add_parser("gc", help="remove incomplete artifacts and stale scratch")
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--unreadable", action="store_true",
                   help="also remove artifacts whose manifest cannot be read (ls lists them)")
    _common(s, compute=False)

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
    ws.scratch_url = args.scratch
    cmd = args.command
    if cmd == "ls":
        if args.kind:  # singular or plural; an unknown kind is an error, never an empty listing
            from .formats import kind as kind_record

            args.kind = kind_record(args.kind).name
        arts = ws.list(args.kind)
        if args.kind:  # one kind: oldest first, newest last (next to the prompt)
            arts.sort(key=lambda a: a.manifest.get("created", 0))
        if args.json:
            print(json.dumps([a.manifest for a in arts], sort_keys=True))
        for a in arts:
            inputs = a.manifest.get("inputs")
            inputs = ", ".join(f"{k}={v}" for k, v in inputs.items()) if isinstance(inputs, dict) else ""
            size = _du(ws, a.path)
            print(f"{a.kind:<11} {a.fingerprint}  {_when(a)}  {format_bytes(size):>10}  {_what(a):<28} "
                  f"from {inputs}", file=sys.stderr if args.json else sys.stdout)
        for kind, fp, problem in ws.unreadable(args.kind):  # reported per artifact; the rest is listed
            size = _du(ws, ws.artifact_path(kind, fp))
            print(f"{kind:<11} {fp}  {format_bytes(size):>10}  UNREADABLE: {problem} (ctstore gc --unreadable "
                  "removes it)", file=sys.stderr if args.json else sys.stdout)
    elif cmd == "show":
        art = ws.get(args.ref)
        print(json.dumps(art.manifest, indent=None if args.json else 2, sort_keys=True))
        for label, path in _run_paths(art):
            print(f"{label}: {path}", file=sys.stderr)
    elif cmd == "verify":
        from .integrity import verify_artifact, verify_lineage

        art = ws.get(args.ref)
        if args.shallow:
            problems, checked = verify_artifact(art), [str(art)]
        else:
            problems, checked = verify_lineage(art)
        if args.json:
            print(json.dumps({"artifact": str(art), "ok": not problems, "problems": problems, "checked": checked}))
        for p in problems:
            print(f"ctstore: {one_line(p)}", file=sys.stderr)
        if problems:
            return 1
        inputs = f" and its {len(checked) - 1} input(s)" if len(checked) > 1 else ""
        log(f"verify: {art}{inputs} intact ({len(art.manifest.get('files', {}))} files)")
    elif cmd == "gc":
        removed = ws.gc(dry_run=args.dry_run, unreadable=args.unreadable)
        if args.json:
            print(json.dumps({"removed": removed, "dry_run": args.dry_run}))
        for path in removed:
            log(f"{'would remove' if args.dry_run else 'removed'} {one_line(path)}")
        log(f"gc: {len(removed)} incomplete item(s)")
        kept = [] if args.unreadable else ws.unreadable()
        if kept:
            names = ", ".join(f"{k}/{f}" for k, f, _ in kept)
            log(f"gc: kept {len(kept)} artifact(s) with an unreadable manifest ({names}); "
                "`ctstore gc --unreadable` removes them")
    else:
        from . import stages

        result = stages.run(args, ws)
        if result is not None:
            _emit(args, result)
    return 0


def _what(artifact) -> str:
    """A few words saying what an artifact is, for ``ls`` (each kind's summary in ``ctstore.formats.KINDS``)."""
    from .formats import kind

    try:
        return kind(artifact.kind).summary(artifact)
    except (KeyError, TypeError, ValueError, AttributeError):  # a manifest from another version: list it anyway
        return "?"


def _when(artifact) -> str:
    import time

    created = artifact.manifest.get("created")
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if created else "-" * 16


def _run_paths(artifact) -> list[tuple[str, str]]:
    """Where to look inside a report (its report.md) or an SFT run (its trained model and metrics)."""
    from .formats.model import RUN_MODEL
    from .formats.report import REPORT
    from .formats.run import METRICS

    if artifact.kind == "report":
        return [("report", artifact.child(artifact.manifest.get("report", REPORT)))]
    if artifact.kind == "run":
        return [("model", artifact.child(RUN_MODEL)), ("metrics", artifact.child(METRICS))]
    return []


def _du(ws, path: str) -> int:
    try:
        return int(ws.fs.du(path))
    except (OSError, ValueError):
        return 0


def os_error_message(exc: OSError) -> str:
    """``<input>: <problem>`` on one line (file names with newlines escaped)."""
    problem = one_line(exc.strerror or str(exc) or type(exc).__name__)
    if not isinstance(getattr(exc, "filename", None), (str, bytes, os.PathLike)):  # None, or an fd (int)
        return problem
    where = one_line(os.fsdecode(exc.filename))
    if getattr(exc, "filename2", None) is not None:
        where += f" -> {one_line(os.fsdecode(exc.filename2))}"
    return f"{where}: {problem}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    set_quiet(getattr(args, "quiet", False))
    try:
        return _run(args)
    except CtstoreError as exc:
        print(f"ctstore: error: {one_line(exc, 4000)}", file=sys.stderr)
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
        print(f"ctstore: error: {os_error_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
