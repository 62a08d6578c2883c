"""The build context `docker build` sends for a .dockerignore, computed offline.

Follows the matcher Docker and BuildKit use (moby/patternmatcher): patterns are cleaned
paths; `*` and `?` stop at `/`, `**` spans directories; a pattern also matches every
file below a directory it matches; `!` re-includes; the last pattern that matches a path
decides. Only what deploy/.dockerignore uses needs to be exact, and `self_test` pins it.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    exclusion: bool  # a `!` line: matching paths are let back in
    text: str


def _to_regex(pattern: str) -> re.Pattern[str]:
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern[i + 1 : i + 2] == "*":
                i += 1
                if pattern[i + 1 : i + 2] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.find("]", i)
            out += pattern[i : end + 1] if end > i else re.escape(ch)
            i = end if end > i else i
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


def parse(text: str) -> list[Pattern]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        cleaned = posixpath.normpath(line).lstrip("/")
        patterns.append(Pattern(_to_regex(cleaned), exclusion, raw.strip()))
    return patterns


def excluded(patterns: list[Pattern], path: str) -> bool:
    """Whether `path` (relative, `/`-separated) is left out of the context."""
    parents = path.split("/")[:-1]
    result = False
    for p in patterns:
        hit = bool(p.regex.match(path)) or any(
            p.regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
        )
        if hit:
            result = not p.exclusion
    return result


def context(patterns: list[Pattern], files: list[str]) -> list[str]:
    return [f for f in files if not excluded(patterns, f)]


def self_test() -> None:
    """The matcher's rules on the cases .dockerignore relies on; raises on a mismatch."""
    ps = parse("*\n!src/\n!deploy/healthcheck\n**/tests/\n# comment\n!keep/**/x.rs\n")
    cases = {
        "Cargo.toml": True,
        "src/main.rs": False,
        "src/config/mod.rs": False,
        "src/tests/a.rs": True,
        "deploy/healthcheck": False,
        "deploy/Dockerfile": True,
        "docs/x.md": True,
        "keep/a/b/x.rs": False,
        "keep/x.rs": False,
        "keep/y.rs": True,
    }
    for path, want in cases.items():
        got = excluded(ps, path)
        if got != want:
            raise AssertionError(f"dockerignore matcher: {path} excluded={got}, expected {want}")
