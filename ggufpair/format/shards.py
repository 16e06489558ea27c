"""Split models: `name-00001-of-00003.gguf` and its siblings (llama.cpp's `llama_split_path` naming)."""

from __future__ import annotations

import re
from pathlib import Path

from ggufpair.errors import MissingShardError

SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def shard_paths(path: str | Path) -> tuple[Path, ...]:
    """All shards of the model `path` belongs to, first shard first; `(path,)` for a single-file model.

    Any shard may be named; a missing sibling is a `MissingShardError` listing every missing name.
    """
    path = Path(path)
    m = SPLIT_RE.match(path.name)
    if not m:
        return (path,)
    count = int(m["count"])
    if count < 1 or int(m["no"]) < 1 or int(m["no"]) > count:
        return (path,)
    paths = tuple(path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1))
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise MissingShardError(
            paths[0],
            f"split model of {count} shards is missing {len(missing)}: {', '.join(missing)}",
            hint="download every shard into the same folder (llama.cpp loads them from the first one)",
        )
    return paths
