"""Write generated files, or check that they are current (the drift check CI runs)."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from pathlib import Path


def write_or_check(outputs: Mapping[Path, str], *, check: bool, fix: str, root: Path | None = None) -> int:
    """Write each path's content; with ``check``, write nothing and return 1 if any differs.

    A stale file's first differing lines are printed, and ``fix`` says how to
    regenerate. Returns the exit status.
    """
    stale = []
    for path, content in outputs.items():
        shown = path.relative_to(root) if root is not None and path.is_relative_to(root) else path
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == content:
            continue
        if check:
            stale.append(shown)
            diff = difflib.unified_diff(
                current.splitlines(), content.splitlines(), str(shown), "generated", lineterm=""
            )
            print("\n".join(list(diff)[:40]), file=sys.stderr)  # noqa: T201 - a command's report
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
            print(f"wrote {shown}")  # noqa: T201
    if stale:
        print(f"stale: {', '.join(map(str, stale))}; run `{fix}`", file=sys.stderr)  # noqa: T201
        return 1
    return 0
