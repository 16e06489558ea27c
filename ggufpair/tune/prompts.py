"""Built-in prompt sets by category, written for ggufpair. Acceptance and the best draft length differ by
category and language, so results are reported per category and overall."""

from __future__ import annotations

import json
from pathlib import Path

from ggufpair.engine.measure import Prompt
from ggufpair.errors import UsageError

_SETS: dict[str, list[str]] = {
    "chat": [
        "What are three things to check before a long bicycle ride?",
        "Explain to a new neighbour how the recycling bins on our street work.",
        "Suggest a plan for a rainy Sunday afternoon with two children.",
    ],
    "code": [
        "Write a Python function that returns the n-th Fibonacci number iteratively.",
        "Write a shell one-liner that counts the lines of every .py file in a folder.",
        "Write a SQL query that lists the ten customers with the highest total order value.",
    ],
    "math": [
        "A train travels 180 km in 2.5 hours. What is its average speed? Show the steps.",
        "Solve for x: 3x + 7 = 25. Explain each step.",
        "What is the sum of the integers from 1 to 100, and why?",
    ],
    "summarization": [
        "Summarize in two sentences: The city council met on Tuesday to discuss the new bus routes. "
        "Residents asked for more evening services and a stop near the hospital. The council agreed to "
        "run a three-month trial starting in spring and to publish ridership figures monthly.",
        "Summarize in one sentence: The library will close for renovation from June to August. Books can be "
        "returned at the community centre, and the children's reading club will meet in the park.",
    ],
    # Edit-style work, where the answer repeats much of the prompt: n-gram lookup (no draft model) drafts it
    # from the prompt itself.
    "edit": [
        "Change this Python function so that it also skips lines that start with '#'. Reply with the whole "
        "function and nothing else.\n\n"
        "def read_names(path):\n"
        "    names = []\n"
        "    with open(path, encoding='utf-8') as f:\n"
        "        for line in f:\n"
        "            line = line.strip()\n"
        "            if not line:\n"
        "                continue\n"
        "            first, _, last = line.partition(' ')\n"
        "            names.append((last.title(), first.title()))\n"
        "    names.sort()\n"
        "    return names\n",
        "Correct the spelling mistakes in this paragraph and reply with the whole corrected paragraph:\n\n"
        "The comittee will meet on Thursday to dicsuss the new parking rules. Residents who want to speek "
        "should register at the front desk before the meeting begins. Coffee and biscuits will be provided, "
        "and the meeting is expected to finish by nine o'clock in the evening.",
        "Fill in this template for a delivery to Anna Berg at 12 Mill Road on 3 March, and reply with the "
        "filled template only:\n\n"
        "Delivery note\n"
        "Recipient: [NAME]\n"
        "Address: [ADDRESS]\n"
        "Date: [DATE]\n"
        "Items: two boxes of printer paper, one desk lamp\n"
        "Signature on receipt: ____________",
        "Rename the variable `total` to `subtotal` everywhere in this code and reply with the whole code:\n\n"
        "def invoice(items, tax_rate):\n"
        "    total = 0\n"
        "    for price, quantity in items:\n"
        "        total += price * quantity\n"
        "    tax = total * tax_rate\n"
        "    print('net', total)\n"
        "    print('tax', tax)\n"
        "    return total + tax\n",
    ],
    "korean": [
        "서울에서 부산까지 기차로 여행할 때 준비할 것들을 알려 주세요.",
        "비 오는 날 집에서 할 수 있는 활동 세 가지를 추천해 주세요.",
    ],
    "chinese": [
        "请用三句话介绍一下如何养护室内绿植。",
        "周末去公园散步有哪些好处？请简单说明。",
    ],
}
CATEGORIES = tuple(_SETS)
LONG = "long"  # a long document to answer questions about, assembled to --prompt-tokens (not in the default set)
LONG_TOKENS = 2000
CHARS_PER_TOKEN = 4  # English prose in the tokenizers of these families: about 4 characters a token

_TEAMS = ("roads", "parks", "water", "library", "transport", "housing", "schools", "health", "waste", "lighting")
_ACTIONS = ("repaired a leaking pipe", "replaced two benches", "repainted the railings", "cleared a blocked drain",
            "planted twelve young oaks", "fixed the east gate", "counted the visitors", "tested the fire alarms",
            "moved the bus stop", "trimmed the hedges", "installed a ramp", "checked the boilers")
_PLACES = ("Mill Road", "the market square", "Station Street", "the north park", "Harbour Lane", "the old school",
           "Church Walk", "the leisure centre", "Elm Avenue", "the river path", "the town hall", "Bridge Street")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _log_entry(i: int) -> str:
    """Entry i of the town works log: varied, and each entry different, so no stretch of it repeats."""
    team, action = _TEAMS[(i * 7) % len(_TEAMS)], _ACTIONS[(i * 5 + i // 12) % len(_ACTIONS)]
    place, day = _PLACES[(i * 11 + i // 7) % len(_PLACES)], _DAYS[i % 7]
    return (f"Entry {i + 1}: on {day}, week {i // 7 + 1}, the {team} team {action} at {place}; it took "
            f"{2 + (i * 3) % 9} hours and cost {40 + (i * 37) % 460} pounds.")


def long_prompts(tokens: int = LONG_TOKENS, count: int = 2) -> list[Prompt]:
    """Questions about a works log of about `tokens` tokens: each a long prefill, then a short answer that
    needs the document (prefill and generation are reported apart)."""
    if tokens < 200:
        raise UsageError(f"--prompt-tokens {tokens}: a long prompt is at least 200 tokens")
    entries: list[str] = []
    while sum(len(e) + 1 for e in entries) < tokens * CHARS_PER_TOKEN:
        entries.append(_log_entry(len(entries)))
    doc = "Town works log\n\n" + "\n".join(entries)
    picks = [len(entries) // 3, (2 * len(entries)) // 3, len(entries) - 2][:count]
    out = []
    for n, i in enumerate(picks):
        question = (f"{doc}\n\nAccording to the log above, which team worked in entry {i + 1}, where, and what did "
                    "it cost? Then list every other entry by the same team in the same week.")
        out.append(Prompt(f"{LONG}-{n}", LONG, ({"role": "user", "content": question},)))
    return out


def builtin_prompts(categories: tuple[str, ...] | list[str] | None = None, per_category: int | None = None,
                    prompt_tokens: int = LONG_TOKENS) -> list[Prompt]:
    chosen = list(categories or CATEGORIES)
    unknown = [c for c in chosen if c not in _SETS and c != LONG]
    if unknown:
        raise UsageError(f"unknown prompt categories: {', '.join(unknown)}",
                         hint=f"choose from {', '.join(CATEGORIES + (LONG,))}")
    out = []
    for cat in chosen:
        if cat == LONG:
            out += long_prompts(prompt_tokens, per_category or 2)
            continue
        for i, text in enumerate(_SETS[cat][:per_category]):
            out.append(Prompt(f"{cat}-{i}", cat, ({"role": "user", "content": text},)))
    return out


def load_prompts(path: str | Path) -> list[Prompt]:
    """JSONL: one object a line, `{"messages": [...], "category": "..."}` (category optional)."""
    path = Path(path)
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"{path}: cannot read prompts ({e.strerror})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in obj["messages"])
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{path}:{n}: not a JSON object with a messages list ({e})") from None
        if not messages:
            raise UsageError(f"{path}:{n}: empty messages list")
        out.append(Prompt(f"{path.stem}-{n}", str(obj.get("category", "custom")), messages))
    if not out:
        raise UsageError(f"{path}: no prompts")
    return out


def saved_prompts(items) -> list[Prompt]:
    """Prompts as a profile records them (`id`, `category`, `messages`: chat messages or a raw string)."""
    out = []
    for item in items or ():
        try:
            messages = item["messages"]
            if isinstance(messages, list):
                messages = tuple({"role": str(m["role"]), "content": str(m["content"])} for m in messages)
            elif not isinstance(messages, str):
                raise TypeError("messages must be a list or a string")
        except (KeyError, TypeError) as e:
            raise UsageError(f"the profile's saved prompt {len(out) + 1} is malformed ({e})") from None
        out.append(Prompt(str(item.get("id", f"saved-{len(out) + 1}")), str(item.get("category", "custom")), messages))
    return out
