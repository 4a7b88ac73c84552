"""Hostile inputs and faults of the data engine: each one ends in a recorded reason or a clear
stop, and nothing is lost (a re-run completes every document, byte-identical to a clean run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymupdf
import pytest

from data_engine import queue
from data_engine.pipeline import run_engine
from data_engine.shards import iter_samples

REPO_ROOT = Path(__file__).resolve().parents[1]
NON_UTF8 = b"r\xe9sum\xe9 \xff.pdf"  # Latin-1 bytes: not a valid UTF-8 file name


def _text_pdf(path: Path | bytes, lines: list[str]) -> None:
    doc = pymupdf.open()
    page = doc.new_page()
    for i, line in enumerate(lines):
        page.insert_text((72, 90 + 16 * i), line, fontname="helv", fontsize=10)
    with open(path, "wb") as f:
        f.write(doc.tobytes())


def text_corpus(d: Path, docs: int, pages: int, lines: int, template: str) -> Path:
    """``docs`` PDFs of ``pages`` pages, each with ``lines`` lines of ``template`` formatted
    with the document ``i``, page ``p`` and line ``k``; returns ``d``."""
    for i in range(docs):
        doc = pymupdf.open()
        for p in range(pages):
            page = doc.new_page()
            for k in range(lines):
                page.insert_text((72, 90 + 16 * k), template.format(i=i, p=p, k=k), fontname="helv", fontsize=10)
        doc.save(d / f"doc_{i:02d}.pdf")
    return d


def _lines(tag: str) -> list[str]:
    return [f"{tag}: line {k} of a page with enough words to pass every filter." for k in range(6)]


def slow_pdf(path: Path, fanout: int = 10, depth: int = 8) -> None:
    """A ~2 KB PDF of nested form XObjects: each level draws the one below `fanout` times, so
    the page holds fanout**depth leaf drawings (10**8: hours of MuPDF work)."""
    doc = pymupdf.open()
    page = doc.new_page(width=200, height=200)
    child = doc.get_new_xref()
    doc.update_object(child, "<</Type/XObject/Subtype/Form/BBox[0 0 10 10]/Resources<<>>>>")
    doc.update_stream(child, b"0 0 1 1 re f")
    for _ in range(depth):
        x = doc.get_new_xref()
        doc.update_object(x, f"<</Type/XObject/Subtype/Form/BBox[0 0 10 10]/Resources<</XObject<</C {child} 0 R>>>>>>")
        doc.update_stream(x, b" ".join([b"/C Do"] * fanout))
        child = x
    doc.xref_set_key(page.xref, "Resources", f"<</XObject<</T {child} 0 R>>>>")
    contents = doc.get_new_xref()
    doc.update_object(contents, "<<>>")
    doc.update_stream(contents, b"/T Do")
    doc.xref_set_key(page.xref, "Contents", f"{contents} 0 R")
    doc.save(path)


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the engine's workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _run(src, out: Path, **kw) -> dict:
    return run_engine(dict(input=str(src), out=str(out), workers=1, progress=False, print_summary=False, **kw))


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def test_hostile_inputs_are_recorded(tmp_path, monkeypatch):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _text_pdf(src / "good.pdf", _lines("good"))
    _text_pdf(os.path.join(os.fsencode(src), NON_UTF8), _lines("non-UTF-8 name"))
    # an HTML page named .pdf (with a non-UTF-8 name too): MuPDF would render it as a page
    with open(os.path.join(os.fsencode(src), b"page \xfe.pdf"), "wb") as f:
        f.write(b"<!DOCTYPE html><html><body><p>" + b"A web page, not a PDF. " * 30 + b"</p></body></html>")
    (src / "dangling.pdf").symlink_to(src / "gone.pdf")
    (src / "loop_a.pdf").symlink_to(src / "loop_b.pdf")
    (src / "loop_b.pdf").symlink_to(src / "loop_a.pdf")
    (src / "sub" / "up").symlink_to(src)  # a folder link back to an ancestor
    (src / "notes.md").write_text("not an input")
    locked = src / "locked"
    locked.mkdir()
    _text_pdf(locked / "hidden.pdf", _lines("hidden"))
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the OS refuse the listing itself
        real_scandir = os.scandir

        def scandir(p="."):
            if os.fspath(p) == str(locked):
                raise PermissionError(13, "Permission denied", str(locked))
            return real_scandir(p)

        monkeypatch.setattr(queue.os, "scandir", scandir)
    try:
        rep = _run(src, tmp_path / "out")
    finally:
        locked.chmod(0o755)

    assert rep["docs"]["failed_by_reason"] == {"not_pdf": 1, "symlink_loop": 3, "dangling_symlink": 1,
                                               "unreadable_dir": 1}
    assert rep["docs"]["ignored_by_suffix"] == {".md": 1}
    assert rep["pages"]["written"] == 2
    rows = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_bytes().splitlines()]
    reasons = {os.fsencode(Path(r["path"]).name): r["reason"] for r in rows}
    assert reasons == {b"page \xfe.pdf": "not_pdf", b"dangling.pdf": "dangling_symlink", b"loop_a.pdf": "symlink_loop",
                       b"loop_b.pdf": "symlink_loop", b"up": "symlink_loop", b"locked": "unreadable_dir"}
    html = next(r for r in rows if r["reason"] == "not_pdf")
    assert html["path_readable"].endswith("page \\xfe.pdf") and "HTML" in html["detail"]

    # the non-UTF-8 name: its page is a sample whose source_path gives back the exact bytes
    by_path = {os.fsencode(s["meta"]["source_path"]): s for s in iter_samples(
        [str(p) for p in (tmp_path / "out" / "shards").glob("*.tar")])}
    assert set(by_path) == {os.fsencode(src / "good.pdf"), os.path.join(os.fsencode(src), NON_UTF8)}
    json.loads((tmp_path / "out" / "report.json").read_bytes().decode("utf-8"))  # valid UTF-8 JSON

    monkeypatch.undo()  # the folder readable again: a re-run adds its document, resumes the rest
    again = _run(src, tmp_path / "out")
    assert again["throughput"]["units_processed"] == 1 and again["docs"]["resumed_units"] == 3
    assert again["docs"]["failed_by_reason"] == {"not_pdf": 1, "symlink_loop": 3, "dangling_symlink": 1}
    assert again["pages"]["written"] == 3


def test_slow_pdf_is_stopped_at_the_time_limit(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    slow_pdf(src / "slow.pdf")
    _text_pdf(src / "fine.pdf", _lines("fine"))
    t0, cpu0 = time.monotonic(), _cpu_s()
    rep = _run(src, tmp_path / "out", doc_timeout_s=2)
    # Stopped, not rendered (hours of CPU): bounded in CPU time, which a busy machine does not
    # inflate (wall time did: 73 s against a 60 s limit); the wall bound only catches a hang.
    assert _cpu_s() - cpu0 < 60 and time.monotonic() - t0 < 600
    assert rep["docs"]["failed_by_reason"] == {"timeout": 1} and rep["pages"]["written"] == 1
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert Path(row["path"]).name == "slow.pdf" and "2 s" in row["detail"]
    # the same limit again: the verdict is kept; a larger limit retries the document
    assert _run(src, tmp_path / "out", doc_timeout_s=2)["throughput"]["units_processed"] == 0
    assert _run(src, tmp_path / "out", doc_timeout_s=2.5)["throughput"]["units_processed"] == 1


def test_a_stuck_page_is_skipped_at_the_page_limit(tmp_path):
    """`page_timeout_s`: the worker stuck on page 1 is stopped, the document re-run without
    that page; its other pages are labelled and page 1 is recorded with its reason."""
    src = tmp_path / "in"
    src.mkdir()
    slow_pdf(tmp_path / "slow.pdf")
    doc = pymupdf.open()
    for k in range(3):
        if k == 1:
            doc.insert_pdf(pymupdf.open(tmp_path / "slow.pdf"))
        else:
            doc.new_page().insert_text((72, 90), f"page {k}: " + _lines("paged")[0], fontname="helv", fontsize=10)
    doc.save(src / "three.pdf")
    t0 = time.monotonic()
    rep = _run(src, tmp_path / "out", page_timeout_s=1.5, doc_timeout_s=120)
    assert time.monotonic() - t0 < 60
    assert rep["docs"]["failed_by_reason"] == {} and rep["pages"]["written"] == 2
    unit = json.loads(next((tmp_path / "out" / "work" / "units").rglob("*.json")).read_text())
    assert [s["page"] for s in unit["samples"]] == [0, 2]
    (skip,) = unit["skipped"]
    assert skip["page"] == 1 and skip["reason"] == "page_timeout" and "1.5 s" in skip["detail"]


def test_output_faults_stop_the_run_and_a_rerun_completes_everything(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        _text_pdf(src / f"doc{i}.pdf", _lines(f"document {i}"))
    ref = _run(src, tmp_path / "ref", max_count=2)
    assert ref["pages"]["written"] == 4

    out = tmp_path / "out"
    victim = queue.hash_file(str(src / "doc2.pdf"))[0]
    blocker = out / "work" / "units" / victim[:2]
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the engine needs a folder")  # like a full disk: EEXIST/ENOSPC alike
    with pytest.raises(queue.OutputError, match="cannot create"):
        _run(src, out, max_count=2)
    # the document is not blamed: no record (not even a failure) and no report
    assert not list((out / "work" / "units").glob(f"*/{victim}.json"))
    assert not (out / "report.json").exists()

    blocker.unlink()
    (out / "shards" / "pages-000001.tar").mkdir(parents=True)  # a folder in the way of a shard
    with pytest.raises(queue.OutputError, match="cannot write the shards"):
        _run(src, out, max_count=2)
    assert (out / "work" / "units" / victim[:2] / f"{victim}.json").is_file()

    (out / "shards" / "pages-000001.tar").rmdir()
    rep = _run(src, out, max_count=2)
    assert rep["docs"]["failed_by_reason"] == {} and rep["pages"]["written"] == 4
    assert _shards(out) == _shards(tmp_path / "ref")


def test_workers_that_cannot_start_stop_the_run(tmp_path):
    """A set-up that fails in every worker (here a tokenizer file that is not JSON) is one clear
    error, not a pool restarting workers for ever nor every document blamed."""
    from data_engine.executor import WorkerStartError

    _text_pdf(tmp_path / "a.pdf", _lines("a"))
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(WorkerStartError, match="could not start"):
        _run(tmp_path / "a.pdf", tmp_path / "out", tokenizer=str(tmp_path / "tokenizer.json"))
    assert not list((tmp_path / "out" / "work" / "units").glob("*/*.json"))


_RUNNER = """
import sys
from data_engine.pipeline import run_engine
run_engine(dict(input=sys.argv[1], out=sys.argv[2], workers=2, progress=False, print_summary=False))
"""


def test_workers_die_with_a_killed_driver(tmp_path, still_running):
    psutil = pytest.importorskip("psutil")
    src = tmp_path / "in"
    src.mkdir()
    slow_pdf(src / "slow.pdf")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(src), str(tmp_path / "out")], cwd=REPO_ROOT,
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    driver = psutil.Process(proc.pid)
    busy = None
    try:
        deadline = time.monotonic() + 120
        while busy is None and time.monotonic() < deadline and proc.poll() is None:
            for child in driver.children(recursive=True):
                try:
                    if child.cpu_times().user > 2.0:  # past start-up (~1 s): rendering the slow page
                        busy = child
                except psutil.Error:
                    continue
            time.sleep(0.1)
        workers = driver.children(recursive=True)
        assert busy is not None, f"no worker got busy with the slow document: {proc.stderr.read()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, not its process group
        proc.wait()
        alive = still_running(workers)
        assert not alive, f"orphaned workers still running: {[(w.pid, w.name()) for w in alive]}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to fill a disk")
def test_disk_full_stop_leaves_no_closed_file_traceback(tmp_path):
    """A unit's tar on a full disk (/dev/full: every write fails with ENOSPC) stops with the
    OutputError alone; the tar stream dropped afterwards must not print "Exception ignored ...
    ValueError: write to closed file" (it flushed into the closed file when collected)."""
    import gc

    from data_engine import shards

    store = queue.UnitStore(tmp_path / "work")
    doc_id = "ab" + "0" * 14
    tmp_tar = store.tmp_tar_path(doc_id)
    tmp_tar.symlink_to("/dev/full")
    unraisable = []
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with pytest.raises(queue.OutputError, match="No space left"):
            with store.open_tmp_tar(doc_id) as f:  # the sequence of pipeline._process_document
                writer = shards.tar_writer(f)
                writer.write({"__key__": f"{doc_id}_00000", "jpg": os.urandom(200_000), "json": b"{}"})
                writer.close()
        del writer
        gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert not unraisable, [f"{u.exc_type.__name__}: {u.exc_value}" for u in unraisable]
