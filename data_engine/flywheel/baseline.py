"""Tesseract 5 on the held-out line patches: the OCR engine users know, beside our CER.

Runs the ``tesseract`` binary (Debian ``tesseract-ocr`` + ``tesseract-ocr-<lang>``; the
project's ``scripts/setup_tesseract.sh`` installs them) on each crop with ``--psm 7`` (one text
line), or ``--psm 6`` (one uniform block of text) for block patches. A missing binary or language pack is not an error: ``availability()`` says why the
column is empty and the report shows that reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import lru_cache

# ISO 639-3 (what shards carry) -> Tesseract traineddata name, where they differ.
TESS_LANG = {"arb": "ara", "cmn": "chi_sim", "yue": "chi_tra", "pes": "fas", "khk": "mon", "zlm": "msa"}


@lru_cache(maxsize=1)
def installed_languages() -> frozenset[str]:
    exe = shutil.which("tesseract")
    if exe is None:
        return frozenset()
    out = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, check=False)
    return frozenset(ln.strip() for ln in out.stdout.splitlines()[1:] if ln.strip())


def availability(lang: str) -> tuple[str | None, str | None]:
    """(tesseract language, None) or (None, reason it cannot run)."""
    if shutil.which("tesseract") is None:
        return None, "tesseract not installed (scripts/setup_tesseract.sh or apt-get install tesseract-ocr)"
    code = TESS_LANG.get(lang, lang)
    if code not in installed_languages():
        return None, f"no Tesseract data for {lang!r} ({code}.traineddata; apt-get install tesseract-ocr-{code.replace('_', '-')})"
    return code, None


def read_line(image, lang: str, timeout: float = 30.0, block: bool = False) -> str:
    """Tesseract's text for one line crop (PIL image); ``block``: a block crop, its lines kept."""
    import io

    code, why = availability(lang)
    if code is None:
        raise RuntimeError(why)
    buf = io.BytesIO()
    image.convert("L").save(buf, format="PNG")
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    out = subprocess.run(["tesseract", "stdin", "stdout", "-l", code, "--psm", "6" if block else "7"], input=buf.getvalue(),
                         capture_output=True, timeout=timeout, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"tesseract failed ({out.returncode}): {out.stderr.decode(errors='replace')[-300:]}")
    text = out.stdout.decode("utf-8", errors="replace")
    if block:
        return "\n".join(" ".join(ln.split()) for ln in text.splitlines() if ln.strip())
    return " ".join(text.split())
