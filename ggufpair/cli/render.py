"""Human output of the CLI: the verdict first, then each model's key facts and the findings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ggufpair.format.model_info import ModelInfo
from ggufpair.pairing.verdict import Finding, Severity, Verdict

_SEVERITY_STYLE = {Severity.BLOCKER: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def make_console(stderr: bool = False) -> Console:
    """A console that wraps nothing by itself and, off a terminal, is wide enough for the tables."""
    import sys

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, soft_wrap=True, width=None if stream.isatty() else 160)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_count(n: int) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def _flag(effective: bool, stored: bool | None) -> str:
    text = "true" if effective else "false"
    if stored is None:
        return f"{text} (default)"
    if stored != effective:
        return f"{text} (stored {'true' if stored else 'false'})"
    return text


def _ident(effective: int, stored: int | None) -> str:
    text = "none" if effective < 0 else str(effective)
    if stored is None:
        return f"{text} (default)"
    if stored != effective:
        return f"{text} (stored {stored})"
    return text


def model_rows(info: ModelInfo) -> list[tuple[str, str]]:
    v = info.vocab
    heads = f"{info.n_head[0] if info.n_head else '?'} / {info.n_head_kv[0] if info.n_head_kv else '?'} KV"
    dims = f"{info.head_dim_k}/{info.head_dim_v}"
    if info.swa_layers:
        dims += f", SWA {info.head_dim_k_swa}/{info.head_dim_v_swa}"
    rows = [
        ("file", f"{info.path}" + (f" (+{len(info.shards) - 1} shards)" if len(info.shards) > 1 else "")),
        ("model", info.display_name),
        ("architecture", str(info.architecture)),
        ("quant", info.quant),
        ("size", f"{human_bytes(info.file_size)} on disk, {human_count(info.parameter_count)} parameters"),
        ("layers / embd", f"{info.n_layers} / {info.n_embd}"),
        ("heads", heads),
        ("head dims K/V", dims),
        ("sliding window", f"{info.sliding_window} on {len(info.swa_layers)} of {info.n_layers} layers"
         if info.swa_layers else "none"),
        ("context", str(info.context_length)),
        ("tokenizer", f"{v.tokenizer_model} ({v.vocab_type_name}), pre {v.pre or '-'}, {v.n_tokens} tokens"),
        ("add_bos / BOS", f"{_flag(v.add_bos, v.add_bos_stored)} / {_ident(v.bos_id, v.bos_id_stored)}"),
        ("add_eos / EOS", f"{_flag(v.add_eos, v.add_eos_stored)} / {_ident(v.eos_id, v.eos_id_stored)}"),
        ("chat template", (info.chat_template_sha256 or "")[:12] or "none"),
    ]
    if info.shared_kv_layers:
        rows.insert(9, ("shared-KV layers", str(info.shared_kv_layers)))
    if info.draft_kind == "mtp":  # drafts for itself as a target; as another's draft it runs as a plain draft
        layers = f"{info.n_nextn} NextN layer{'s' * (info.n_nextn != 1)}" if info.n_nextn else "NextN layers"
        rows.append(("MTP layers", f"{layers}: drafts for itself as the target (tune --kinds mtp)"))
    elif info.draft_kind:
        rows.append(("special draft", info.draft_kind))
    if v.overridden:
        rows.append(("overridden", ", ".join(v.overridden)))
    for note in v.notes:
        rows.append(("note", note))
    if v.load_error:
        rows.append(("LOAD ERROR", v.load_error))
    return rows


def models_table(*infos: tuple[str, ModelInfo]) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("")
    for label, _ in infos:
        table.add_column(label, overflow="fold")
    rows = [model_rows(info) for _, info in infos]
    for i, (name, _) in enumerate(rows[0]):
        table.add_row(name, *(r[i][1] if i < len(r) and r[i][0] == name else _lookup(r, name) for r in rows))
    for r in rows[1:]:
        for name, value in r:
            if name not in {n for n, _ in rows[0]}:
                table.add_row(name, *(value if rr is r else "" for rr in rows))
    return table


def _lookup(rows: list[tuple[str, str]], name: str) -> str:
    return next((v for n, v in rows if n == name), "")


def finding_text(f: Finding) -> Text:
    text = Text()
    text.append(f"{f.severity.value:<8}", style=_SEVERITY_STYLE[f.severity])
    text.append(f"{f.check}: ", style="bold")
    text.append(f.message)
    if f.llama_reports:
        text.append("  [llama.cpp stops here]", style="dim")
    for fix in f.fixes:
        text.append(f"\n          fix ({fix.route.value}): ", style="green")
        text.append(fix.argument or fix.note)
    if f.severity == Severity.BLOCKER and not f.fixes:
        text.append("\n          no metadata fix exists", style="dim")
    return text


def print_verdict(console: Console, verdict: Verdict) -> None:
    style = "bold green" if verdict.compatible else "bold red"
    console.print(Text("Verdict: ", style="bold") + Text(verdict.summary, style=style))
    if not verdict.compatible and any(f.speculation_off for f in verdict.blockers):
        console.print("llama-server would start and serve WITHOUT speculation (no error, no speedup).", style="red")
    console.print()
    target, draft = verdict.as_loaded()  # with --override-kv: the values llama.cpp will use, the stored beside
    console.print(models_table(("target", target), ("draft", draft)))
    if verdict.findings:
        console.print()
        console.print("Findings", style="bold")
        for f in verdict.findings:
            console.print(finding_text(f))


def print_model(console: Console, info: ModelInfo, problem: str | None = None) -> None:
    """`problem`: why llama.cpp cannot load the vocabulary (format.vocab.load_problem), or None."""
    problem = problem or info.vocab.load_error
    if problem:
        console.print(Text("llama.cpp cannot load this vocabulary: ", style="bold red") + Text(problem))
    else:
        console.print(Text("Loadable by llama.cpp", style="bold green"))
    console.print()
    console.print(models_table(("model", info)))


def print_plan(console: Console, plan) -> None:
    from ggufpair.pairing.verdict import Route

    if plan.empty:
        style = "bold red" if plan.unfixable else "bold green"
        console.print(Text(plan.why[:1].upper() + plan.why[1:], style=style))
    else:
        route = {Route.OVERRIDE_KV: "no copy (--override-kv)", Route.PATCH: "patch the file"}[plan.route]
        console.print(Text("Plan: ", style="bold") + Text(route, style="bold cyan") + Text(f" ({plan.why})"))
        if plan.route == Route.OVERRIDE_KV:
            for arg in plan.override_args:
                console.print(f"  --override-kv {arg}")
            console.print("  (equivalent file change, not made:)", style="dim")
        for line in plan.diff():
            style = "red" if line.startswith("-") else "green" if line.startswith("+") else "dim"
            console.print(Text(line, style=style))
    for problem in plan.unfixable:
        console.print(Text("cannot fix: ", style="bold red") + Text(problem))


def print_fix_result(console: Console, result, after=None) -> None:
    if result.mode == "override":
        console.print(Text("No file was changed: start llama-server with the --override-kv arguments above.",
                           style="bold green"))
        console.print("  (`ggufpair tune` works them out and applies them itself; its profile and launch script "
                      "keep them)", style="dim")
        if after is not None:
            console.print(f"With it: {after.summary}")
        return
    what = {"in-place": "patched in place", "rewrite": "rewritten"}[result.mode]
    console.print(Text(f"Fixed: {result.path} {what} in {result.seconds:.2f} s", style="bold green"))
    if result.data_verified:
        console.print(f"  tensor data verified byte for byte against the source ({human_bytes(result.bytes_copied)})")
    if result.backup:
        console.print(f"  original kept as {result.backup}")


def print_demo(console: Console, result) -> None:
    console.rule("1. inspect")
    if result.verdict_before is not None:
        console.print(Text("Verdict: ", style="bold") + Text(result.verdict_before.summary, style="red"))
    if result.spec_off_reason is not None:
        console.print(f"Proof with the real llama-server: /slots reports speculative=false; its log: {result.spec_off_reason}")
    console.rule("2. fix")
    if result.plan is not None:
        print_plan(console, result.plan)
    if result.fix is not None:
        print_fix_result(console, result.fix, result.verdict_after)
    console.rule("3. tune (paired baseline, same prompts, chat-formatted, greedy)")
    if result.verdict_before is not None and not result.verdict_before.target.has_chat_template:
        console.print("The target has no chat template: llama-server formats the chat prompts with "
                      "its ChatML default.", style="dim")
    base = result.tuned.best_baseline if result.tuned is not None else None
    console.print(points_table(result.points, base.measurement.tokens_per_second if base else None))
    for what, why in (result.tuned.pruned if result.tuned is not None else ()):
        console.print(f"left out: {what}: {why}", style="dim")
    if result.tuned is not None and result.tuned.recommended is not None:
        console.print(category_table(result.tuned))
    if result.lossless is not None:
        console.print(f"Lossless check: {result.lossless.summary(result.lossless_what)} (compared: "
                      f"{result.lossless_of} against no speculation)")
        for d in result.lossless.divergences:
            margin = "unknown" if d.baseline_margin is None else f"{d.baseline_margin:.3f} nats"
            console.print(f"  {d.prompt_id}: first difference at generated token {d.index} "
                          f"(baseline {d.baseline_token}, with draft {d.draft_token}); top-2 margin {margin}"
                          f"{' (near tie)' if d.near_tie else ''}", style="dim")
    console.rule("4. recommendation")
    console.print(Text(result.recommendation, style="bold"))
    if result.profile_path:
        console.print(f"profile: {result.profile_path}")
    if result.script_path:
        console.print(f"launch script: {result.script_path}")


def points_table(points, baseline_tps: float | None = None) -> Table:
    from ggufpair.engine.measure import spread_text

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("configuration", "tok/s", "spread", "speedup", "accept", "acc/step", "by position"):
        table.add_column(col, no_wrap=col != "by position")
    from ggufpair.tune.run import label

    for p in points:
        m = p.measurement
        if m is None:
            table.add_row(label(p, points), "failed", "", "", "", "", p.error or "")
            continue
        table.add_row(
            label(p, points), f"{m.tokens_per_second:.1f}" + (" (stopped)" if m.stopped_early else ""), spread_text(m),
            f"{m.tokens_per_second / baseline_tps:.2f}x" if baseline_tps else "",
            f"{m.acceptance_rate:.0%}" if m.acceptance_rate is not None else "-",
            f"{m.mean_accepted_per_step:.2f}" if m.mean_accepted_per_step is not None else "-",
            " ".join(f"{x:.2f}" for x in m.accept_by_position[:8]) or "-",
        )
    return table


def level_table(result, level: int) -> Table:
    """The points measured with `level` requests in flight at once: the aggregate rate, what one request
    sees, and the time to its first token, against that level's own baseline."""
    at = result.at(level)
    base = at.best_baseline
    table = Table("configuration", "tok/s in all", "speedup", "per request", "first token", "accept", box=None,
                  header_style="bold", pad_edge=False, title=f"{level} requests at once (a server with {level} slots)")
    for p in (q for q in result.points if q.config.parallel == level):
        m = p.measurement
        if m is None:
            table.add_row(p.label, "failed", "", "", "", p.error or "")
            continue
        b = base.measurement.tokens_per_second if base else None
        table.add_row(p.label, f"{m.tokens_per_second:.1f}", f"{m.tokens_per_second / b:.2f}x" if b else "",
                      f"{m.request_tps_median:.1f}" if m.request_tps_median else "-",
                      f"{m.ttft_ms_median:.0f} ms" if m.ttft_ms_median is not None else "-",
                      f"{m.acceptance_rate:.0%}" if m.acceptance_rate is not None else "-")
    return table


def drafter_table(rows: list[dict]) -> Table:
    """The model drafters side by side: the fastest configuration of each, its acceptance, its acceptance by
    draft position (from its longest run), and the memory it needs in all."""
    table = Table("drafter", "kind", "best", "tok/s", "speedup", "accept", "accepted by position", "memory",
                  box=None, header_style="bold", pad_edge=False, title="model drafters, fastest first")
    for r in rows:
        tps = r["tokens_per_second"]
        table.add_row(r["drafter"], r["spec_type"], r["best"] or "never live", f"{tps:.1f}" if tps else "-",
                      f"{r['speedup']:.2f}x" if r["speedup"] else "-",
                      f"{r['acceptance_rate']:.0%}" if r["acceptance_rate"] is not None else "-",
                      " ".join(f"{x:.2f}" for x in r["accept_by_position"][:8])
                      + (f" (n_max {r['positions_from']})" if r["accept_by_position"] else "-"),
                      f"{r['memory_bytes'] / 2**20:.0f} MiB" if r["memory_bytes"] else "-")
    return table


def print_tune(console: Console, result, outputs) -> None:
    base = result.best_baseline
    levels = result.levels
    console.rule(f"measured (paired baseline, same prompts, chat-formatted, {result.sampling.describe()})")
    console.print(points_table([p for p in result.points if p.config.parallel == result.level],
                               base.measurement.tokens_per_second if base else None))
    drafters = result.drafter_table()
    if len(drafters) > 1:
        console.print(drafter_table(drafters))
    for level in ([result.level] if result.level > 1 else []) + levels[1:]:
        console.print(level_table(result, level))
    for what, why in result.pruned:
        console.print(f"left out: {what}: {why}", style="dim")
    for what in result.unmeasured:
        console.print(f"not measured (time budget spent): {what}", style="dim")
    rec = result.recommended
    if rec is not None and rec.measurement.per_category:
        console.print(category_table(result))
        long = rec.measurement.per_category.get("long")
        blong = base.measurement.per_category.get("long") if base else None
        if long and long.get("prefill_tokens_per_second"):
            n = long.get("prompt_tokens", 0) // max(len(rec.measurement.tps_runs), 1) // max(
                sum(q.category == "long" for q in result.prompts), 1)
            console.print(f"long prompts (about {n} tokens each): prefill {long['prefill_tokens_per_second']:.0f} tok/s "
                          f"with the recommendation" + (f", {blong['prefill_tokens_per_second']:.0f} without "
                                                         "speculation" if blong and blong.get(
                                                             "prefill_tokens_per_second") else "")
                          + f"; generation after it {long['tokens_per_second']:.1f} tok/s"
                          + (f" ({blong['tokens_per_second']:.1f} without)" if blong else ""))
    if result.reused:
        console.print(f"{result.reused} point(s) reused from the interrupted tune (measured then under the same "
                      "conditions; the baseline was measured again now)", style="dim")
    starts = sum(p.measurement.servers if p.ok else 1 for p in result.points if not p.reused)
    console.print(f"{result.launches} configurations measured ({starts} llama-server starts: a kind that keeps a "
                  f"table gets a fresh one per repetition) in {result.seconds:.0f} s" if starts != result.launches
                  else f"{result.launches} launches in {result.seconds:.0f} s", style="dim")
    console.rule("recommendation")
    console.print(Text(outputs.recommendation, style="bold"))
    rd = outputs.data.get("recommended") or {}
    if rd.get("predicted_memory_bytes"):
        measured = rd.get("measured_memory_bytes")
        console.print(f"memory: predicted {human_bytes(rd['predicted_memory_bytes'])}"
                      + (f", measured {human_bytes(measured)} (llama.cpp's own buffer report)" if measured else ""))
        by_dev, pred = rd.get("measured_by_device") or {}, rd.get("predicted_by_device") or {}
        if by_dev:
            console.print("  per device: " + "; ".join(
                f"{dev} {human_bytes(n)}" + (f" (predicted {human_bytes(pred[dev])})" if dev in pred else "")
                for dev, n in sorted(by_dev.items())))
    for label, path in (("profile", outputs.profile), ("launch script", outputs.script), ("llama-swap entry", outputs.swap),
                        ("llama-server logs", outputs.data.get("logs"))):
        if path:
            console.print(f"{label}: {path}")
        if label == "profile" and path and outputs.replaced:
            console.print(f"  (it replaces {outputs.replaced}; save one elsewhere too with --profile PATH)",
                          style="yellow")


def category_table(result) -> Table:
    """Per prompt category: the baseline's rate, the recommendation's, and the fastest configuration there."""
    rec, base = result.recommended, result.best_baseline
    table = Table("category", "no spec. tok/s", "recommended", "accept", "fastest here", "tok/s", "speedup",
                  box=None, header_style="bold", title="by category (same prompts, same session)")
    winners = result.category_winners()
    for cat, v in rec.measurement.per_category.items():
        acc = v.get("acceptance_rate")
        b = base.measurement.per_category.get(cat, {}).get("tokens_per_second") if base else None
        win, speedup = winners.get(cat, (None, None))
        wtps = win.measurement.per_category.get(cat, {}).get("tokens_per_second") if win else None
        table.add_row(cat, f"{b:.1f}" if b else "-", f"{v['tokens_per_second']:.1f}", "-" if acc is None else f"{acc:.0%}",
                      ("no speculation" if not win.config.speculates else win.label) if win else "-",
                      f"{wtps:.1f}" if wtps else "-", f"{speedup:.2f}x" if speedup else "-")
    return table


def print_suggestions(console: Console, target, suggestions, left_out=()) -> None:
    console.print(f"Drafts for {target.display_name} {target.quant}:", style="bold")
    if not suggestions:
        found = f"{len(left_out)} of the target's vocabulary found locally, none small enough" if left_out else \
            "none found locally"
        console.print(f"{found}, and no preset for this family; pass --draft PATH or org/repo[:QUANT]")
    for s in suggestions:
        where = str(s.path) if s.path else f"hub: {s.hub}"
        console.print(f"  {s.name}: {s.why}  ({where})")
    for s in left_out:
        console.print(f"  left out: {s.name}: {s.why}  ({s.path})", style="dim")
