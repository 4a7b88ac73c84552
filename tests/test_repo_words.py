"""The repository's words: no process vocabulary in code and docs, and every repository file a
comment or doc names exists (a renamed module must not leave its old name behind)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("benchmarks", "conf", "data_engine", "docs", "models", "scripts", "tests", "train")
# Words about how the project was made, not about what it does.
PROCESS_WORDS = re.compile(r"\b(Engineer [A-Z]\b|the issue's|[Ii]ssue \"|sessions? that wrote|coordinator|"
                           r"issue author)")


def _files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / f for f in out.splitlines() if f.endswith((".py", ".md", ".yaml", ".sh")) and
            f != "tests/test_repo_words.py"]


def test_no_process_words():
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()[:100]}" for p in _files() if p.is_file()
            for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if PROCESS_WORDS.search(line)]
    assert not hits, "\n".join(hits)


def test_named_repository_files_exist():
    pattern = re.compile(r"\b((?:%s)/[\w/]+\.(?:py|md|yaml|sh))\b" % "|".join(TOP))
    missing = sorted({f"{p.relative_to(REPO)} names {m}" for p in _files() if p.is_file()
                      for m in pattern.findall(p.read_text(encoding="utf-8", errors="replace"))
                      if not (REPO / m).exists() and "*" not in m and "<" not in m})
    assert not missing, "\n".join(missing)
