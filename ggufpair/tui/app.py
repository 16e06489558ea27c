"""The Textual face of ggufpair: pick a pair, see and fix the verdict, watch the tune, take the profile home.

It holds no logic of its own: every action is a core call the CLI makes too (locate.discover,
pairing.check_pair, fix.plan_pair_fix / apply_plan, tune.search.tune, tune.run.save_outputs).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Label, ProgressBar, Static

from ggufpair.errors import GgufpairError, UsageError


def short_path(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it, else from ~."""
    path = Path(path)
    for base, shown in ((Path.cwd(), ""), (Path.home(), "~/")):
        if base.resolve() == Path(base.anchor):
            continue  # relative to / is no shorter, only confusing
        try:
            return shown + str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def distinguishing_paths(paths) -> list[str]:
    """Each path's shortest tail that no other path shares: the file name alone, or with as many of its
    folders as it takes (two Hugging Face snapshots often hold files of the same name)."""
    parts = [Path(p).parts for p in paths]
    depth = [1] * len(parts)
    while True:
        tails = [str(Path(*p[-d:])) for p, d in zip(parts, depth)]
        clash = {t for t in tails if tails.count(t) > 1}
        grow = [i for i, t in enumerate(tails) if t in clash and depth[i] < len(parts[i])]
        if not grow:
            return tails
        for i in grow:
            depth[i] += 1


def output_lines(outputs) -> list[str]:
    """The recommendation, then where the profile, script and llama-swap entry are."""
    lines = [outputs.recommendation, f"profile: {short_path(outputs.profile)}" if outputs.profile else "no profile written"]
    if outputs.profile and outputs.replaced:
        lines.append(f"  (it replaces {outputs.replaced})")
    lines += [f"{what}: {short_path(path)}" for what, path in (("launch script", outputs.script),
                                                               ("llama-swap entry", outputs.swap)) if path]
    return lines


def notify_error(app: App, err: Exception) -> None:
    """Errors are notifications with their hint, never tracebacks."""
    if isinstance(err, GgufpairError):
        app.notify(err.message + (f"\nhint: {err.hint}" if err.hint else ""), title="ggufpair", severity="error", timeout=15)
    else:
        app.notify(f"{type(err).__name__}: {err}", title="unexpected error", severity="error", timeout=15)


@dataclass
class Session:
    """What the user has chosen so far."""

    candidates: list = field(default_factory=list)
    target: object | None = None  # Candidate
    draft: object | None = None
    overrides: tuple[str, ...] = ()
    result: object | None = None  # TuneResult
    outputs: object | None = None  # TuneOutputs

    def choose(self, role: str, candidate) -> None:
        """Make `candidate` the target or the draft. A fix belongs to the pair it was made for: another model
        in either role clears the overrides, and the verdict is judged on the files as they are."""
        before = getattr(self, role)
        if before is None or candidate is None or Path(before.path) != Path(candidate.path):
            self.overrides = ()
        setattr(self, role, candidate)


class ModelsScreen(Screen):
    BINDINGS = [
        Binding("t", "pick('target')", "Target"),
        Binding("d", "pick('draft')", "Draft"),
        Binding("s", "suggest", "Suggest drafts"),
        Binding("v", "verdict", "Verdict"),
        Binding("n", "alone", "Tune target alone"),
        Binding("r", "rescan", "Rescan"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("Models found locally: t = use as target, d = use as draft, v = the pair's verdict, n = tune the "
                    "target without a draft file (n-gram lookup, its own MTP layers)", id="help")
        yield DataTable(id="models", cursor_type="row", zebra_stripes=True)
        yield Static("", id="choice", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#models", DataTable)
        table.add_columns("model", "size", "quant", "file", "vocab", "context", "path")
        self.fill()

    def fill(self) -> None:
        table = self.query_one("#models", DataTable)
        table.clear()
        shown = distinguishing_paths([c.path for c in self.app.session.candidates])
        for c, where in zip(self.app.session.candidates, shown):
            i = c.info
            table.add_row(i.display_name, i.size_label or "", i.quant, f"{i.file_size / 2**20:.0f} MiB",
                          f"{i.vocab.tokenizer_model} {i.vocab.n_tokens}", str(i.context_length), where)
        self.show_choice()

    def show_choice(self) -> None:
        s = self.app.session
        t = s.target.info.display_name + " " + s.target.info.quant if s.target else "-"
        d = s.draft.info.display_name + " " + s.draft.info.quant if s.draft else "-"
        self.query_one("#choice", Static).update(f"target: {t}    draft: {d}")

    def _current(self):
        table = self.query_one("#models", DataTable)
        if not self.app.session.candidates:
            return None
        return self.app.session.candidates[table.cursor_row]

    def action_pick(self, role: str) -> None:
        c = self._current()
        if c is not None:
            self.app.session.choose(role, c)
            self.show_choice()

    def action_rescan(self) -> None:
        self.app.scan()
        self.fill()

    def action_suggest(self) -> None:
        from ggufpair.tune.run import suggest_drafts

        s = self.app.session
        if s.target is None:
            self.app.notify("pick a target first (t)", severity="warning")
            return
        left_out: list = []
        found = suggest_drafts(s.target.info, s.candidates, left_out)
        text = "\n".join([f"{x.name}: {x.why} ({x.path or 'hub: ' + str(x.hub)})" for x in found]
                         + [f"left out: {x.name} ({short_path(x.path)}): {x.why}" for x in left_out]) or "no drafts found"
        self.app.notify(text, title="draft suggestions", timeout=20)

    def action_verdict(self) -> None:
        s = self.app.session
        if s.target is None or s.draft is None:
            self.app.notify("pick a target (t) and a draft (d) first", severity="warning")
            return
        self.app.push_screen(VerdictScreen())

    def action_alone(self) -> None:
        s = self.app.session
        if s.target is None:
            self.app.notify("pick a target first (t)", severity="warning")
            return
        s.choose("draft", None)  # no draft file: the fix of an earlier pair goes with it
        self.show_choice()
        self.app.push_screen(ConfigScreen())


class VerdictScreen(Screen):
    BINDINGS = [
        Binding("p", "preview", "Preview fix"),
        Binding("o", "fix('override')", "Fix: no copy"),
        Binding("f", "fix('patch')", "Fix: patch file"),
        Binding("n", "configure", "Tune"),
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]
    armed_patch: Path | None = None  # `f` pressed once: the file a second `f` patches

    def compose(self) -> ComposeResult:
        yield Header()
        yield VerticalScroll(Static("", id="verdict", markup=False), Static("", id="plan", markup=False))
        yield Footer()

    def on_mount(self) -> None:
        self.refresh_verdict()

    def refresh_verdict(self) -> None:
        from ggufpair.pairing.verdict import check_pair, parse_override

        s = self.app.session
        try:
            v = check_pair(s.target.info, s.draft.info, dict(parse_override(o) for o in s.overrides))
        except GgufpairError as e:
            notify_error(self.app, e)
            return
        lines = [("COMPATIBLE" if v.compatible else "INCOMPATIBLE") + f": {v.summary}", ""]
        if s.overrides:
            lines.append("with --override-kv " + " ".join(s.overrides))
        for f in v.findings:
            lines.append(f"[{f.severity.value}] {f.check}: {f.message}")
            lines += [f"    fix ({x.route.value}): {x.argument or x.note}" for x in f.fixes]
        self.query_one("#verdict", Static).update("\n".join(lines))

    def _plan(self, route: str):
        from ggufpair.fix.plan import RouteChoice, plan_pair_fix

        s = self.app.session
        return plan_pair_fix(s.draft.path, s.target.path, RouteChoice(route))

    def action_preview(self) -> None:
        try:
            plan = self._plan("auto")
        except GgufpairError as e:
            notify_error(self.app, e)
            return
        diff = [line.replace(str(plan.path), plan.path.name) for line in plan.diff()] if plan.changes else []
        text = [f"route: {plan.route.value if plan.route else 'none'} ({plan.why})", *plan.override_args, *diff]
        text += [f"cannot fix: {u}" for u in plan.unfixable]
        self.query_one("#plan", Static).update("\n".join(text))

    def action_fix(self, route: str) -> None:
        from ggufpair.fix.apply import apply_plan
        from ggufpair.format.model_info import read_model_info

        s = self.app.session
        try:
            plan = self._plan(route)
            if plan.empty:
                self.app.notify(plan.why)
                return
            if plan.route is not None and plan.route.value == "patch" and self.armed_patch != plan.path:
                self.armed_patch = plan.path  # a file changes: one more key press to confirm
                self.app.notify(f"press f again to patch {plan.path.name} ({plan.why}); p previews the change",
                                title="patch the file?", timeout=10)
                return
            self.armed_patch = None
            result = apply_plan(plan)
        except GgufpairError as e:
            notify_error(self.app, e)
            return
        if result.mode == "override":
            s.overrides = tuple(plan.override_args)
            self.app.notify("no file changed; --override-kv kept for the tune and the launch script")
        else:
            s.draft = type(s.draft)(s.draft.path, read_model_info(s.draft.path), s.draft.where)
            s.overrides = ()  # the file itself is fixed now: no override is needed, nor said
            self.app.notify(f"{result.path.name} {result.mode}, verified")
        self.refresh_verdict()

    def action_configure(self) -> None:
        self.app.push_screen(ConfigScreen())


class ConfigScreen(Screen):
    BINDINGS = [Binding("ctrl+s", "start", "Start tune"), Binding("escape", "app.pop_screen", "Back")]
    FIELDS = [("kinds", "kinds (draft, ngram, ngram-mod, ...)", "draft,ngram"), ("lengths", "draft lengths", "1-8"),
              ("kv", "target KV types", "f16,q8_0,q4_0"),
              ("draft_kv", "draft KV types", "f16,q8_0,q4_0"), ("ctx", "context (empty: largest that fits)", ""),
              ("categories", "prompt categories", "chat,code,edit"), ("margin", "memory margin", "0.1"),
              ("tokens", "tokens per prompt", "64"), ("repeats", "repetitions", "2")]

    def compose(self) -> ComposeResult:
        s = self.app.session
        alone = "mtp,ngram" if s.target is not None and s.target.info.draft_kind == "mtp" else "ngram"
        yield Header()
        with VerticalScroll():
            for key, label, default in self.FIELDS:
                if key == "kinds" and s.draft is None:  # the target alone: what runs without a draft file
                    default = alone
                with Horizontal(classes="field"):
                    yield Label(f"{label:>36}  ")
                    field_input = Input(value=default, id=f"f_{key}")
                    field_input.cursor_blink = self.app.cursor_blink
                    yield field_input
            yield Label("ctrl+s starts the tune. These defaults are shorter than the CLI's (draft lengths 1-16, "
                        "128 tokens, two prompts of every category) so that a tune here takes minutes", id="hint")
        yield Footer()

    def values(self) -> dict[str, str]:
        return {key: self.query_one(f"#f_{key}", Input).value.strip() for key, _, _ in self.FIELDS}

    def action_start(self) -> None:
        self.app.push_screen(TuneScreen(self.values(), runner=self.app.tune_runner))


class TuneScreen(Screen):
    """The live tune. `runner(screen)` runs it in a worker thread, reporting through `post` (plan, events,
    points) and returning (TuneResult, TuneOutputs), or None when cancelled before a result; the default
    runs the core tune with the real llama-server."""

    BINDINGS = [Binding("c", "cancel", "Cancel tune"), Binding("escape", "back", "Back")]

    def __init__(self, values: dict[str, str], runner=None) -> None:
        super().__init__()
        self.values = values
        self.runner = runner or TuneScreen.core_tune
        self.cancel_event = threading.Event()
        self.points: list = []
        self.budget = 0
        self.plan = None  # tune.setup.DevicePlan, once the core tune has made it
        self.dialect = None

    def compose(self) -> ComposeResult:
        from textual_plotext import PlotextPlot

        with Vertical():
            yield Static("starting", id="status")
            yield ProgressBar(id="progress", show_eta=False)  # the status line has the ETA from launch times
            yield PlotextPlot(id="chart")
            yield Static("", id="memory")
            yield Static("", id="acceptance")
            yield Static("", id="result", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.run_tune()

    def on_unmount(self) -> None:
        self.cancel_event.set()  # leaving the app mid-tune stops the server

    def post(self, method, *args, **kwargs) -> None:
        """Call a method of this screen (or the app's `notify`, with its keywords) on the UI thread, from the
        tune's thread."""
        self.app.call_from_thread(method, *args, **kwargs)

    def set_plan(self, planned: int, budget: int) -> None:
        self.budget = budget
        self.query_one("#progress", ProgressBar).update(total=planned, progress=len(self.points))

    @work(thread=True, exclusive=True)
    def run_tune(self) -> None:
        try:
            done = self.runner(self)
        except (GgufpairError, ValueError) as e:
            self.post(notify_error, self.app, e)
            return
        if done is not None:
            self.post(self.finished, *done)

    def core_tune(self):
        from ggufpair.engine.binary import find_llama_server
        from ggufpair.engine.config import ServerConfig
        from ggufpair.engine.devices import describe, devices
        from ggufpair.engine.dialect import probe_dialect
        from ggufpair.engine.kinds import parse_kinds
        from ggufpair.state import run_log_dir
        from ggufpair.tune.prompts import builtin_prompts
        from ggufpair.tune.run import save_outputs
        from ggufpair.tune.search import TuneSpec, check_tune_values, context_that_fits, same_file, tune
        from ggufpair.tune.setup import Remote, check_mtp_asked, mtp_offered, plan_devices

        s = self.app.session
        v = self.values
        margin = float(v["margin"] or 0.1)
        lengths = check_tune_values(tokens=int(v["tokens"] or 64), repeats=int(v["repeats"] or 2), margin=margin,
                                    ctx=int(v["ctx"]) if v["ctx"] else None, kv=v["kv"], draft_kv=v["draft_kv"],
                                    lengths=v["lengths"])
        if s.draft is not None:
            same_file(s.target.path, s.draft.path)
        asked = parse_kinds(v["kinds"] or "draft,ngram")
        check_mtp_asked(s.target.info, asked)
        binary = find_llama_server(self.app.llama_server)
        dialect = probe_dialect(binary.path)
        kinds = parse_kinds(v["kinds"] or "draft,ngram", dialect)
        draft = s.draft if "draft" in kinds else None  # the kinds asked for may leave the draft model out
        mtp, note = mtp_offered(s.target.info, dialect, kinds)
        if note:
            self.post(self.app.notify, note, severity="warning")
        ngram = tuple(k for k in kinds if k in dialect.ngram_kinds)
        if draft is None and not mtp and not ngram:
            raise UsageError(f"kinds {v['kinds']}: nothing to tune" + ("" if s.draft else " without a draft file"),
                             hint="pick a draft (d), or ask for n-gram lookup (ngram)")
        # per device where the build lists GPUs or --rpc adds remote ones: each device's share checked, the
        # placements measured (over RPC: the target's layers remote, a draft kept local)
        remote = Remote.parse(self.app.rpc)
        for w in remote.warnings:
            self.post(self.app.notify, w, severity="warning")
        devs = devices(binary.path, rpc=remote.hosts)
        plan = plan_devices(devs, margin, draft is not None or mtp, rpc=bool(remote.hosts))
        self.plan, self.dialect = plan, dialect
        base = ServerConfig(target=s.target.path, draft=draft.path if draft else None, ctx=int(v["ctx"] or 4096),
                            overrides=s.overrides if draft else (), threads=self.app.threads,
                            **remote.place(devs, draft is not None))
        if plan.placements:
            base = plan.placements[0].apply(base)
        if not v["ctx"]:
            base = base.with_(ctx=context_that_fits(s.target.info, draft.info if draft else None, base, plan.budget,
                                                    plan.kind, dialect.fa_takes_value))
        spec = TuneSpec(base=base, lengths=lengths, target_kv=tuple(v["kv"].split(",")),
                        draft_kv=tuple(v["draft_kv"].split(",")),
                        prompts=tuple(builtin_prompts(v["categories"].split(","), per_category=1)),
                        n_predict=int(v["tokens"] or 64), repeats=int(v["repeats"] or 2), budget_bytes=plan.budget,
                        device=plan.kind, ngram_kinds=ngram, mtp=mtp, device_budgets=plan.budgets,
                        placements=plan.placements)
        self.post(self.set_plan, spec.planned_launches(with_draft=draft is not None), plan.budget)  # (MTP: spec.mtp)
        from ggufpair.engine.traffic import Sampling
        from ggufpair.tune.resume import TuneJournal, conditions

        # an interrupted tune of this pair under the same conditions: its points are reused (said), not re-run
        journal = TuneJournal.for_pair(s.target.path, [draft.path] if draft else [],
                                       conditions(binary, plan.kind, spec.prompts, spec.n_predict, spec.repeats, Sampling(),
                                                  base.ctx), resume=True)
        if journal.reusable:
            self.post(self.app.notify, f"resuming: {len(journal.reusable)} measured point(s) of an interrupted tune "
                                       "of this pair still apply (the baseline is measured again)")
        result = tune(binary, dialect, spec, s.target.info, draft.info if draft else None, run_log_dir(s.target.path.stem),
                      on_event=lambda m: self.post(self.show_event, m), on_point=lambda p: self.post(self.add_point, p),
                      cancel=self.cancel_event, journal=journal)
        if not result.cancelled:
            journal.finished()
        args = SimpleNamespace(tokens=spec.n_predict, categories=v["categories"], profile=None, script=None,
                               format="bash", host="127.0.0.1", port=8080)
        return result, save_outputs(result, binary, dialect, describe(list(plan.devices)), args,
                                    "see the verdict screen" if draft else "no draft model")

    def show_event(self, message: str) -> None:
        self.query_one("#status", Static).update(message)

    def add_point(self, point) -> None:
        self.points.append(point)
        self.query_one("#progress", ProgressBar).advance(1)
        self.draw_chart()
        self.draw_memory(point)
        m = point.measurement
        if m is not None and m.accept_by_position:
            bars = "  ".join(f"{i}:{'#' * int(q * 10):<10}{q:.2f}" for i, q in enumerate(m.accept_by_position[:8]))
            self.query_one("#acceptance", Static).update(f"acceptance by position ({point.label}): {bars}")

    def draw_chart(self) -> None:
        from textual_plotext import PlotextPlot

        widget = self.query_one("#chart", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.title("tok/s by draft length, a curve per kind (line: no speculation)")
        series: dict[str, list] = {}
        base = None
        for p in self.points:
            if not p.ok:
                continue
            if p.config.speculates:
                key, x = curve_of(p.config)
                series.setdefault(key, []).append((x, p.measurement.tokens_per_second))
            else:
                base = max(base or 0, p.measurement.tokens_per_second)
        for key, pts in series.items():
            pts.sort()
            plt.plot([x for x, _ in pts], [y for _, y in pts], label=key, marker="dot")
        if base:
            plt.hline(base)
        widget.refresh()

    def draw_memory(self, point) -> None:
        """The predicted memory of the configuration just measured against the budget; with GPUs or RPC devices,
        each device's share against its own budget, under the placement it ran with."""
        from ggufpair.engine.memory import estimate_pair

        s = self.app.session
        if not self.budget:
            return
        cfg = point.config
        draft = s.draft.info if s.draft is not None and cfg.draft is not None else None  # MTP: no file
        fa = self.dialect.fa_takes_value if self.dialect is not None else True
        est = estimate_pair(s.target.info, draft, cfg, self.plan.kind if self.plan else "cpu", fa)
        budgets = self.plan.budgets if self.plan is not None else ()
        if budgets:
            from ggufpair.engine.placement import device_loads, placement_of

            loads = device_loads(s.target.info, draft, cfg, est, list(budgets), fa)
            shares = [f"{b.name} {loads.get(b.name, 0) / 2**20:.0f}/{b.budget_bytes / 2**20:.0f}" for b in budgets]
            placed = getattr(placement_of(self.plan.placements, cfg), "name", None)
            self.query_one("#memory", Static).update("memory MiB by device: " + ", ".join(shares)
                                                     + (f"  ({placed})" if placed else ""))
            return
        used = est.total
        bar = "#" * int(min(used / self.budget, 1.0) * 40)
        self.query_one("#memory", Static).update(f"memory {used / 2**20:.0f} / {self.budget / 2**20:.0f} MiB  [{bar:<40}]")

    def finished(self, result, outputs) -> None:
        self.app.session.result, self.app.session.outputs = result, outputs
        lines = [outputs.recommendation]
        rec = result.recommended
        if rec is not None and rec.measurement.per_category:
            lines += [f"  {c}: {v['tokens_per_second']:.1f} tok/s" for c, v in rec.measurement.per_category.items()]
        lines += output_lines(outputs)[1:]
        self.query_one("#result", Static).update("\n".join(lines))
        self.query_one("#status", Static).update(f"done: {result.launches} launches in {result.seconds:.0f} s")
        self.set_timer(0.3, lambda: self.app.push_screen(ResultScreen()))

    def action_cancel(self) -> None:
        self.cancel_event.set()
        self.query_one("#status", Static).update("cancelling: stopping the server...")

    def action_back(self) -> None:
        self.cancel_event.set()
        self.app.pop_screen()


def curve_of(config) -> tuple[str, int]:
    """The chart's curve for a configuration and its x: a draft by its KV types and length; an n-gram kind by
    the most tokens it drafts (the kind's length parameter, held at the other parameters' best)."""
    from ggufpair.tune.result import lookup_length

    if config.ngram is None:
        return f"draft {config.cache_type_k}+{config.draft_cache_type_k}", config.draft_max
    if config.has_draft:
        return f"{config.ngram}+draft", config.draft_max
    return config.ngram, lookup_length(config)


class ResultScreen(Screen):
    BINDINGS = [Binding("w", "write('bash')", "Write script"), Binding("l", "write('llama-swap')", "llama-swap entry"),
                Binding("escape", "app.pop_screen", "Back"), Binding("q", "app.quit", "Quit")]

    def compose(self) -> ComposeResult:
        yield Label("Result: w = write the launch script, l = a llama-swap entry", id="help")
        yield VerticalScroll(Static("", id="summary", markup=False), DataTable(id="categories"),
                             DataTable(id="points", zebra_stripes=True))
        yield Footer()

    def on_mount(self) -> None:
        s = self.app.session
        o = s.outputs
        self.query_one("#summary", Static).update("\n".join(output_lines(o)) if o else "no result")
        rec = s.result.recommended if s.result else None
        cats = self.query_one("#categories", DataTable)
        cats.add_columns("recommended, by category", "tok/s", "acceptance", "fastest on this category", "speedup")
        winners = s.result.category_winners() if rec else {}
        for name, c in (rec.measurement.per_category.items() if rec else ()):
            acc = c.get("acceptance_rate")
            win, speedup = winners.get(name, (None, None))
            cats.add_row(name, f"{c['tokens_per_second']:.1f}", "-" if acc is None else f"{acc:.0%}",
                         "-" if win is None else win.label if win.config.speculates else "no speculation",
                         "-" if speedup is None else f"{speedup:.2f}x")
        from ggufpair.engine.measure import spread_text

        table = self.query_one("#points", DataTable)
        table.add_columns("configuration (* recommended)", "tok/s", "spread", "acceptance", "acc/step")
        for p in s.result.points if s.result else []:
            m = p.measurement
            label = ("* " if p is rec else "  ") + p.label
            if m is None:
                table.add_row(label, "failed", "", "", "")
            else:
                table.add_row(label, f"{m.tokens_per_second:.1f}", spread_text(m),
                              "-" if m.acceptance_rate is None else f"{m.acceptance_rate:.0%}",
                              "-" if m.mean_accepted_per_step is None else f"{m.mean_accepted_per_step:.2f}")

    def action_write(self, fmt: str) -> None:
        from ggufpair.engine.binary import find_llama_server
        from ggufpair.engine.dialect import probe_dialect
        from ggufpair.tune.profile import launch_script, listen_address, llama_swap_entry, load_profile, write_script

        o = self.app.session.outputs
        if o is None or o.profile is None:
            self.app.notify("no profile to write from", severity="warning")
            return
        try:
            data, config = load_profile(o.profile)
            binary = find_llama_server(self.app.llama_server)
            dialect = probe_dialect(binary.path)
            if fmt == "bash":
                host, port = listen_address(data)  # as the tune wrote it
                path = write_script(launch_script(config, binary, dialect, host=host, port=port, profile=o.profile),
                                    o.profile.with_suffix(".sh"))
            else:
                path = o.profile.with_suffix(".llama-swap.yaml")
                path.write_text(llama_swap_entry(o.profile.stem, config, binary, dialect))
        except GgufpairError as e:
            notify_error(self.app, e)
            return
        self.app.notify(f"written: {path}")


class GgufpairApp(App):
    TITLE = "ggufpair"
    SUB_TITLE = "speculative decoding pairs for llama.cpp"
    CSS = """
    #models { height: 1fr; }
    #chart { height: 12; }
    #categories { height: auto; margin-bottom: 1; }
    .field { height: 3; }
    .field Label { padding-top: 1; }
    """

    def __init__(self, llama_server: str | None = None, threads: int | None = None,
                 model_dirs: list[Path] | None = None, cursor_blink: bool = True, profile: Path | None = None,
                 tune_runner=None, rpc: str | None = None) -> None:
        super().__init__()
        self.rpc = rpc  # `--rpc`: rpc-servers whose devices take the target's layers (tune.setup.Remote)
        self.cursor_blink = cursor_blink
        self.profile = profile
        self.tune_runner = tune_runner
        self.session = Session()
        self.llama_server = llama_server
        self.threads = threads
        self.model_dirs = model_dirs or []

    def scan(self) -> None:
        from ggufpair.locate import discover

        self.session.candidates = sorted(discover(self.model_dirs), key=lambda c: (c.info.file_size, str(c.path)))

    def on_mount(self) -> None:
        self.scan()
        self.push_screen(ModelsScreen())
        if self.profile is not None:
            self.open_profile(self.profile)

    def open_profile(self, path: Path) -> None:
        """Show a saved profile's tune: its recommendation, every measured point, the script actions."""
        from ggufpair.tune.run import result_from_profile

        try:
            self.session.result, self.session.outputs = result_from_profile(Path(path))
        except GgufpairError as e:
            notify_error(self, e)
            return
        self.push_screen(ResultScreen())


def run_tui(llama_server: str | None = None, threads: int | None = None, model_dirs: list[Path] | None = None,
            profile: Path | None = None, rpc: str | None = None) -> int:
    GgufpairApp(llama_server, threads, model_dirs, profile=profile, rpc=rpc).run()
    return 0
