"""The `ggufpair` command. A thin face: parse arguments, call the core, render, map errors to exit codes."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from ggufpair import __version__
from ggufpair.errors import EXIT_CODES, GgufpairError, ModelFileError, UsageError

INCOMPATIBLE_EXIT = EXIT_CODES["incompatible pair (inspect)"]
FIXABLE_EXIT = EXIT_CODES["incompatible pair, fixable (inspect)"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ggufpair",
        description="Speculative decoding for llama.cpp: which speculation (a draft model, n-gram lookup, both) "
                    "pays for your model and prompts, measured against a paired baseline.",
        epilog="Where to start: `ggufpair demo` runs the whole job on a built-in pair. With your own models: "
               "`ggufpair inspect TARGET DRAFT` (will llama.cpp speculate?), then `ggufpair fix DRAFT -r TARGET` "
               "if it says so, then `ggufpair tune --target TARGET [--draft DRAFT]` (without a draft it tunes "
               "n-gram lookup), then `ggufpair launch PROFILE`.",
    )
    parser.add_argument("--version", action="version", version=f"ggufpair {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="a model's key facts, or a pair's verdict: will llama.cpp speculate?")
    p.add_argument("model", help="the GGUF file (the target, when a draft is given)")
    p.add_argument("draft", nargs="?", help="the draft GGUF file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--override-kv", action="append", default=[], metavar="KEY=TYPE:VALUE",
                   help="judge the pair as llama-server would with this --override-kv (repeatable)")
    p.add_argument("--llama", action="store_true",
                   help="also ask llama.cpp's own loader (llama-cpp-python) for its verdict and compare")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("fix", help="repair a draft's metadata so llama.cpp speculates with it (or one file's own faults)")
    p.add_argument("model", help="the GGUF file to fix (the draft, with --reference)")
    p.add_argument("--reference", "-r", metavar="TARGET", help="the target the draft must agree with")
    p.add_argument("--route", choices=["auto", "override", "patch"], default="auto",
                   help="override: no copy, --override-kv in the launch command; patch: change the file (default: auto)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    p.add_argument("--output", "-o", metavar="PATH", help="write the fixed model here and leave the original alone")
    p.add_argument("--backup", action="store_true", help="keep the original as MODEL.bak (a hard link: no copy)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_fix)

    from ggufpair.cli import tune_cmds

    tune_cmds.add_parsers(sub)

    p = sub.add_parser("doctor", help="which llama-server ggufpair uses, its build, devices and flag dialect")
    p.add_argument("--llama-server", metavar="PATH", help="the llama-server binary to check")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("tui", help="the interactive terminal interface (also: ggufpair with no arguments)")
    p.add_argument("--llama-server", metavar="PATH")
    p.add_argument("--threads", type=int)
    p.add_argument("--dir", action="append", default=[], help="another folder to search for models")
    p.add_argument("--profile", metavar="PROFILE", help="open a saved profile's tune result")
    p.add_argument("--rpc", metavar="HOST:PORT[,...]",
                   help="rpc-servers whose devices take the target's layers in a tune (as `tune --rpc`)")
    p.set_defaults(func=cmd_tui)

    p = sub.add_parser("demo", help="the whole job on a built-in real pair: inspect, fix, a short tune, a profile")
    p.add_argument("--draft-lengths", default="2,4,8", help="draft lengths to measure (default: 2,4,8)")
    p.add_argument("--tokens", type=int, default=64, help="tokens generated per prompt (default: 64)")
    p.add_argument("--repeats", type=int, default=2, help="repetitions of each measurement (default: 2)")
    p.add_argument("--categories", default="chat,code,edit",
                   help="prompt categories, two prompts each (default: chat,code,edit; `edit` is where n-gram "
                        "lookup pays)")
    p.add_argument("--threads", type=int, help="llama-server threads (default: its own choice)")
    p.add_argument("--llama-server", metavar="PATH", help="the llama-server binary to use")
    p.set_defaults(func=cmd_demo)
    return parser


def _local_model(query: str | None) -> str | None:
    """A path as given, or a local model's short name resolved to its path (`270M`, "gemma-3 Q4_K_M"); Hub
    references are not downloaded here."""
    if query is None or os.path.exists(query):
        return query
    from ggufpair.locate import resolve

    return str(resolve(query, download=False))


def cmd_inspect(args: argparse.Namespace) -> int:
    from ggufpair.cli import render
    from ggufpair.format.model_info import read_model_info
    from ggufpair.pairing.verdict import check_pair, parse_override
    from ggufpair.report import model_dict, verdict_dict

    console = render.make_console()
    # llama-server takes several in one argument, comma-separated (arg.cpp's string_split on ',')
    overrides = dict(parse_override(o) for arg in args.override_kv for o in arg.split(",") if o)
    args.model, args.draft = _local_model(args.model), _local_model(args.draft)
    from ggufpair.fix.apply import recovery_note

    for path in (args.model, args.draft):
        if path is not None and (note := recovery_note(path)):
            render.make_console(stderr=True).print(f"warning: {note}", style="bold yellow")
    if args.draft is None:
        from ggufpair.format.vocab import load_problem

        from ggufpair.fix.plan import plan_self_fix

        info = read_model_info(args.model, overrides)
        problem = load_problem(info.vocab)
        # what `ggufpair fix MODEL` would repair in the file (a load failure, or a defect llama.cpp loads anyway)
        repairs = plan_self_fix(info.path, info if not overrides else None).changes
        if args.json:
            data = model_dict(info)
            data["vocab"]["load_error"] = problem
            data["repairs"] = [{"key": c.key, "action": c.action.value, "reason": c.reason} for c in repairs]
            print(json.dumps(data, indent=2))
        else:
            render.print_model(console, info, problem)
            if repairs:
                console.print(f"`ggufpair fix {args.model}` repairs: "
                              + "; ".join(f"{c.key} ({c.reason})" for c in repairs), style="yellow")
        if problem is None:
            return 0
        return FIXABLE_EXIT if repairs else INCOMPATIBLE_EXIT  # repairs of an unloadable file make it load
    verdict = check_pair(read_model_info(args.model), read_model_info(args.draft), overrides)
    data = verdict_dict(verdict)
    from ggufpair.fix.planned import planned

    earlier = planned(Path(args.draft), Path(args.model)) if not verdict.compatible and not overrides else None
    if earlier:
        data["planned_override"] = earlier["override_args"]
    if args.llama:
        from ggufpair.pairing.llama_oracle import llama_verdict

        lv = llama_verdict(args.model, args.draft, overrides)
        data["llama_cpp"] = {"compatible": lv.compatible, "failed_check": lv.failed_check,
                             "agrees": lv.compatible == verdict.compatible}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        render.print_verdict(console, verdict)
        if earlier:
            console.print(f"\nA no-copy fix of this pair was planned on {earlier['when'][:10]} (`ggufpair fix`): the files "
                          "are unchanged, and llama-server speculates with them when given "
                          + " ".join(f"--override-kv {a}" for a in earlier["override_args"])
                          + f" (a `ggufpair tune` profile carries it). To make it permanent: ggufpair fix "
                            f"{args.draft} --reference {args.model} --route patch", style="yellow")
        if args.llama:
            agree = data["llama_cpp"]["agrees"]
            console.print(f"\nllama.cpp's own loader: {'compatible' if lv.compatible else 'incompatible'}"
                          f"{'' if lv.compatible else f' ({lv.failed_check})'}; "
                          f"{'agrees' if agree else 'DISAGREES'} with ggufpair",
                          style="green" if agree else "bold red")
    if verdict.compatible:
        return 0
    return FIXABLE_EXIT if all(f.fixes for f in verdict.blockers) else INCOMPATIBLE_EXIT


def cmd_fix(args: argparse.Namespace) -> int:
    from ggufpair.cli import render
    from ggufpair.fix.apply import apply_plan, pending_recovery, recover, resolve_output
    from ggufpair.fix.plan import RouteChoice, plan_pair_fix, plan_self_fix, verdict_after
    from ggufpair.format.shards import shard_paths
    from ggufpair.report import plain, plan_dict

    console = render.make_console(stderr=args.json)
    # Every argument is checked before anything is written, a rollback of an interrupted fix included.
    route = RouteChoice(args.route)
    if args.output and args.backup:
        raise UsageError("--backup keeps the original when it is replaced; with --output it is never replaced",
                         hint="drop --backup")
    if args.output and route == RouteChoice.OVERRIDE:
        raise UsageError("--output writes a fixed copy of the file, and the no-copy route writes none",
                         hint="drop --route override to write the copy, or drop --output")
    if args.backup and route == RouteChoice.OVERRIDE:
        raise UsageError("--backup keeps the original of a file that is changed, and the no-copy route changes none",
                         hint="drop --route override to patch the file (the original kept as .bak), or drop --backup")
    if route == RouteChoice.OVERRIDE and not args.reference:
        raise UsageError("--route override needs --reference: overrides are judged against the target")
    args.model, args.reference = _local_model(args.model), _local_model(args.reference)
    first = shard_paths(args.model)[0]
    for path in (first, shard_paths(args.reference)[0] if args.reference else None):
        if path is not None and not os.path.isfile(path):  # exit 3 before any write, a rollback included
            raise ModelFileError(path, "no such file" if not os.path.exists(path) else "not a file")
    output = resolve_output(first, args.output)
    if args.dry_run:  # a dry run writes nothing, a rollback included
        if pending_recovery(first):
            raise UsageError(f"{first}: an interrupted fix of this file left a journal, so its header may be "
                             "half-patched and a plan of it would mislead",
                             hint="run the fix without --dry-run: it rolls back first, then plans (or says why "
                                  "it cannot)")
    else:
        for line in recover(first):  # under the file's lock: never undoes a fix another process is running
            console.print(line, style="yellow")
    if output is not None or args.backup:
        route = RouteChoice.PATCH  # a copy to write, or a file to change with its original kept, is asked for
    if args.reference:
        plan = plan_pair_fix(args.model, args.reference, route)
    else:
        plan = plan_self_fix(args.model)
    if output is not None and plan.route is not None:
        plan = dataclasses.replace(plan, why=f"a fixed copy is written to {output}; {plan.path.name} stays as it is")
    render.print_plan(console, plan)
    data = {"plan": plan_dict(plan), "applied": None}
    if plan.empty or args.dry_run:
        if args.json:
            print(json.dumps(data, indent=2))
        return 0 if not plan.unfixable else INCOMPATIBLE_EXIT
    result = apply_plan(plan, output=output, backup=args.backup)
    if result.mode == "override" and args.reference:  # `inspect` of the same files says so afterwards
        from ggufpair.fix.planned import remember

        remember(Path(args.model), Path(args.reference), result.override_args)
    data["applied"] = plain(result)
    after = verdict_after(plan) if result.mode == "override" else None
    render.print_fix_result(console, result, after)
    if result.mode != "override" and not args.output and os.path.islink(plan.path):
        console.print(f"  {plan.path} is a link to it, and stays one")
    if args.json:
        print(json.dumps(data, indent=2))
    return 0 if not plan.unfixable else INCOMPATIBLE_EXIT


def cmd_doctor(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ggufpair.cli import render
    from ggufpair.engine.binary import find_llama_server
    from ggufpair.engine.devices import MIB, devices
    from ggufpair.engine.dialect import probe_dialect
    from ggufpair.tune.profile import build_info

    binary = find_llama_server(args.llama_server)
    dialect = probe_dialect(binary.path)
    devs = devices(binary.path)
    data = {"llama_server": str(binary.path), "source": binary.source, "build": build_info(binary),
            "devices": [{"name": d.name, "description": d.description, "total_mib": d.total_bytes // MIB,
                         "free_mib": d.free_bytes // MIB, "source": d.source} for d in devs],
            "dialect": dialect.summary()}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    console = render.make_console()
    console.print(f"llama-server: {binary.path} (found via {binary.source})", style="bold")
    console.print(f"build: {data['build']}")
    table = Table("device", "description", "total", "free", "from", box=None, header_style="bold")
    for d in devs:
        table.add_row(d.name, d.description, f"{d.total_bytes // MIB} MiB", f"{d.free_bytes // MIB} MiB", d.source)
    console.print(table)
    if devs and devs[0].name == "CPU":
        console.print("no GPU reported by this build: the memory budget is host RAM", style="dim")
    console.print("flag dialect:", style="bold")
    for key, value in data["dialect"].items():
        console.print(f"  {key}: {value}")
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from pathlib import Path

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("the TUI needs a terminal (standard input and output are not one here)",
                         hint="run it in a terminal, or use the commands: ggufpair --help")
    from ggufpair.tui.app import run_tui

    from ggufpair.cli.tune_cmds import find_profile

    profile = getattr(args, "profile", None)
    rpc = getattr(args, "rpc", None)
    if rpc:
        from ggufpair.engine.rpc import parse_rpc

        parse_rpc(rpc)  # a malformed list is a usage error before the screen opens
    return run_tui(getattr(args, "llama_server", None), getattr(args, "threads", None),
                   [Path(d) for d in getattr(args, "dir", [])], find_profile(profile) if profile else None, rpc)


def cmd_demo(args: argparse.Namespace) -> int:
    from ggufpair.cli import render
    from ggufpair.demo import run_demo
    from ggufpair.engine.binary import find_llama_server

    console = render.make_console()
    try:
        lengths = tuple(int(x) for x in args.draft_lengths.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--draft-lengths must be comma-separated integers, not {args.draft_lengths!r}") from None
    from ggufpair.tune.prompts import builtin_prompts

    categories = tuple(c for c in args.categories.split(",") if c)
    builtin_prompts(categories)  # an unknown name is a usage error before anything starts
    binary = find_llama_server(args.llama_server)
    console.print(f"ggufpair demo with {binary.path} ({binary.source})", style="bold")
    result = run_demo(lambda msg: console.print(f"  {msg}", style="dim"), draft_lengths=lengths,
                      n_predict=args.tokens, repeats=args.repeats, threads=args.threads, binary=binary,
                      categories=categories)
    render.print_demo(console, result)
    return 0


def report_error(err: GgufpairError) -> None:
    print(f"ggufpair: error: {err.message}", file=sys.stderr)
    hint = err.hint
    if isinstance(err, ModelFileError) and err.path.exists():
        from ggufpair.fix.apply import recovery_note

        hint = recovery_note(err.path) or hint  # a half-patched header explains any format error
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


class _ClosedPipeSafe:
    """stdout that survives its reader going away (`ggufpair inspect A B | head -2`): the first write that meets
    a closed pipe points the descriptor at /dev/null (so no flush, at exit either, fails) and the command goes
    on to its own exit code, with nothing printed about it."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _closed(self) -> None:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._closed()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._closed()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    if not isinstance(sys.stdout, _ClosedPipeSafe) and sys.stdout is sys.__stdout__ and sys.stdout is not None:
        sys.stdout = _ClosedPipeSafe(sys.stdout)
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            if sys.stdin.isatty() and sys.stdout.isatty():
                return cmd_tui(args)
            parser.print_help()
            return EXIT_CODES["usage"]
        return args.func(args)
    except GgufpairError as err:
        report_error(err)
        if getattr(args, "json", False):  # a script asked for JSON: it gets the error as JSON too
            import json

            path = getattr(err, "path", None)
            print(json.dumps({"error": {"kind": type(err).__name__, "message": err.message, "hint": err.hint,
                                        "path": str(path) if path is not None else None,
                                        "exit_code": err.exit_code}}, indent=2))
        return err.exit_code
    except KeyboardInterrupt:
        print("ggufpair: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
