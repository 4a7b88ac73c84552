"""Faults on the training side: unreadable and truncated shards, damaged checkpoints, bad run
lengths, re-done steps in metrics.jsonl, a killed launcher. Each ends in one clear error or a
recovery that loses nothing."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from train.checkpoints import checkpoint_problem, select_checkpoint
from train.data_sources import ShardStream

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shard(path: Path, n: int, prefix: str = "r") -> list[str]:
    """A webdataset tar of ``n`` records (json + a 3 KB bin member each); returns the keys."""
    keys = [f"{prefix}{i:04d}" for i in range(n)]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, key in enumerate(keys):
            for ext, data in (("json", json.dumps({"i": i}).encode()), ("bin", bytes([i % 251]) * 3000)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return keys


def _epoch(stream: ShardStream) -> list[str]:
    keys = []
    for rec in stream:
        if stream.epoch > 0:
            break
        keys.append(rec["__key__"])
    return keys


@pytest.mark.parametrize("open_shards", [1, 4])
def test_all_bad_shards_stop_with_one_clear_error(tmp_path, caplog, open_shards):
    bad = []
    for i, data in enumerate([b"", b"not a tar at all" * 100, os.urandom(4096)]):
        (tmp_path / f"bad-{i}.tar").write_bytes(data)
        bad.append(str(tmp_path / f"bad-{i}.tar"))
    with caplog.at_level(logging.WARNING, logger="train.data_sources"):
        with pytest.raises(RuntimeError, match="a whole pass over its 3 shard.*no record"):
            next(iter(ShardStream(bad, name="ocr", slot=0, nslots=1, seed=0, open_shards=open_shards)))
    assert len(caplog.records) <= 3  # one warning per shard, no flood
    with pytest.raises(RuntimeError, match=r"2 shards in a row could not be read.*max_bad_shards=2"):
        next(iter(ShardStream(bad, name="ocr", slot=0, nslots=1, seed=0, max_bad_shards=2, open_shards=open_shards)))
    # a good shard among bad ones keeps the stream going: the streak resets (at most 3 + 3 bad
    # in a row across an epoch boundary)
    good = _shard(tmp_path / "good.tar", 3)
    st = ShardStream([*bad, str(tmp_path / "good.tar")], name="ocr", slot=0, nslots=1, seed=0, max_bad_shards=7,
                     open_shards=open_shards)
    it = iter(st)
    assert sorted(next(it)["__key__"] for _ in range(9)) == sorted(good * 3)


def test_all_bad_shards_through_the_loader(tmp_path):
    from test_stage1 import train_tiny_tokenizer

    from models.tokenizer import load_tokenizer
    from train.data import build_train_loader

    for i in range(3):
        (tmp_path / f"bad-{i}.tar").write_bytes(b"\0garbage" * 64)
    tok = load_tokenizer(train_tiny_tokenizer(tmp_path / "tok", ["some words to learn"] * 20))
    loader = build_train_loader({"shards": [str(tmp_path / "bad-*.tar")], "num_workers": 0,
                                 "source_weights": {"ocr": 1.0}}, tok, seq_len=64, micro_batch_size=1, seed=0)
    t0, cpu0 = time.monotonic(), time.process_time()
    with pytest.raises(RuntimeError, match="no record"):
        next(iter(loader))
    assert time.process_time() - cpu0 < 30 and time.monotonic() - t0 < 300  # CPU: a busy machine inflates wall time


def test_truncated_tar_keeps_the_records_before_the_damage(tmp_path):
    keys = _shard(tmp_path / "t.tar", 20)
    data = (tmp_path / "t.tar").read_bytes()
    with tarfile.open(tmp_path / "t.tar") as tf:
        members = tf.getmembers()
    cut = members[29].offset_data + 100  # inside record 14's bin member
    (tmp_path / "t.tar").write_bytes(data[:cut])
    complete = {m.name.split(".")[0] for m in members if m.offset_data + m.size <= cut}
    complete = {k for k in complete if all(m.offset_data + m.size <= cut for m in members if m.name.startswith(k + "."))}
    assert complete == set(keys[:14])

    _shard(tmp_path / "u.tar", 5, prefix="u")
    urls = [str(tmp_path / "t.tar"), str(tmp_path / "u.tar")]
    # shuffle window larger than the shard: before, the whole window was lost with the error
    got = _epoch(ShardStream(urls, name="ocr", slot=0, nslots=1, seed=1, shuffle_window=256))
    assert len(got) == len(set(got)) == 14 + 5
    assert {k for k in got if k.startswith("r")} == complete
    # the position inside the damaged shard resumes exactly
    a = ShardStream(urls, name="ocr", slot=0, nslots=1, seed=1, shuffle_window=8)
    ref = _epoch(a)
    b = ShardStream(urls, name="ocr", slot=0, nslots=1, seed=1, shuffle_window=8)
    it = iter(b)
    first = [next(it)["__key__"] for _ in range(9)]
    c = ShardStream(urls, name="ocr", slot=0, nslots=1, seed=1, shuffle_window=8)
    c.load(b.state())
    assert first + _epoch(c) == ref


# ----------------------------------------------------------------------------- checkpoints

def _fake_checkpoint(root: Path, step: int) -> Path:
    d = root / f"step_{step:08d}"
    d.mkdir(parents=True)
    torch.save({"w": torch.randn(64, 64)}, d / "mp_rank_00_model_states.pt")
    torch.save({"step": step}, d / "rank_00000_client_state.pt")
    return d


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_checkpoint_selection_falls_back_and_names_the_damage(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        _fake_checkpoint(root, step)
    (root / "latest").write_text("step_00000003")  # step 4: a save that never finished
    assert select_checkpoint(root) == root / "step_00000003"
    _truncate(root / "step_00000003" / "mp_rank_00_model_states.pt")
    assert "mp_rank_00_model_states.pt cannot be read" in checkpoint_problem(root / "step_00000003", 0)
    with caplog.at_level(logging.WARNING, logger="train.checkpoints"):
        assert select_checkpoint(root) == root / "step_00000002"
    assert "step_00000003 is damaged" in caplog.text and "mp_rank_00_model_states.pt" in caplog.text
    # an explicitly named damaged checkpoint is an error, not a silent fall-back
    with pytest.raises(RuntimeError, match="step_00000003 cannot be resumed"):
        select_checkpoint(root / "step_00000003")
    # `latest` naming a missing folder: one line naming it
    shutil.rmtree(root / "step_00000001")
    shutil.rmtree(root / "step_00000002")
    shutil.rmtree(root / "step_00000003")
    with pytest.raises(FileNotFoundError) as e:
        select_checkpoint(root)
    assert "step_00000003" in str(e.value) and "does not exist" in str(e.value) and "\n" not in str(e.value)


def test_truncated_checkpoint_resumes_from_the_intact_one(tmp_path):
    """Stage 1 for real (DeepSpeed): the last checkpoint truncated, resume=auto continues from
    the one before, redoes the step with the same loss, and metrics.jsonl lists each step once."""
    from test_stage1 import stage1_cfg, train_tiny_tokenizer, write_tiny_shards

    from train.stage1 import run_stage1

    shards, texts = write_tiny_shards(tmp_path / "shards")
    data = {"shards": shards, "tokenizer": str(train_tiny_tokenizer(tmp_path / "tok", texts))}
    kw = dict(steps=2, save_every=1, micro_batch_size=1, global_batch_size=1)
    full = run_stage1(stage1_cfg(data, tmp_path / "run", resume="null", **kw))
    ckpt = tmp_path / "run" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000002"
    _truncate(ckpt / "step_00000002" / "mp_rank_00_model_states.pt")
    again = run_stage1(stage1_cfg(data, tmp_path / "run", resume="auto", **kw))
    assert again["losses"] == pytest.approx(full["losses"][1:], rel=1e-5)  # step 2 redone, same loss
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


@pytest.mark.parametrize("override, message", [
    ("train.steps=-1", "train.steps must be >= 1"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("train.micro_batch_size=0", "train.micro_batch_size must be >= 1"),
    ("train.global_batch_size=3", "multiple of micro_batch_size"),
])
def test_run_lengths_are_checked_before_any_work(tmp_path, override, message):
    from train.api import compose, train

    with pytest.raises(ValueError, match=message):  # at composition (schema ranges) or at start
        train(compose("smoke", ["train.micro_batch_size=2", override, f"train.out_dir={tmp_path}",
                                "model.tokenizer=/nonexistent"]))
    assert not (tmp_path / "encoder.safetensors").exists()


# ----------------------------------------------------------------------------- launcher death

_RANK = """
import os, sys, time
import torch.distributed as dist
from train.distributed import init_distributed
init_distributed({"train": {"backend": "gloo"}})
open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.pid"), "w").write(str(os.getpid()))
if dist.get_rank() == 0:
    time.sleep(600)
dist.barrier()  # rank 1 waits here for rank 0: blocked in a collective
"""


def test_ranks_exit_when_their_launcher_dies(tmp_path, still_running):
    psutil = pytest.importorskip("psutil")
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tmp_path)], cwd=REPO_ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 600  # a loaded 2-core CI machine imports torch slowly
        while len(pids) < 2 and time.monotonic() < deadline and proc.poll() is None:
            pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid") if p.read_text()]
            time.sleep(0.2)
        assert len(pids) == 2, "the ranks did not start"
        ranks = [psutil.Process(p) for p in pids]
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's process group; ranks run in their own sessions
        alive = still_running(ranks)
        assert not alive, f"ranks still running after their launcher died: {[r.pid for r in alive]}"
    finally:
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("where", ["next_header", "end_blocks"])
def test_truncated_tar_keeps_every_complete_record(tmp_path, where):
    """Cut at the next record's header, or where the end-of-archive blocks were lost: every
    record whose members are all present is read (before, the last one was dropped: 4 of 5)."""
    keys = _shard(tmp_path / "t.tar", 5)
    data = (tmp_path / "t.tar").read_bytes()
    with tarfile.open(tmp_path / "t.tar") as tf:
        members = tf.getmembers()
    last = members[-1]
    cut = members[8].offset + 10 if where == "next_header" else last.offset_data + last.size
    (tmp_path / "t.tar").write_bytes(data[:cut])
    got = _epoch(ShardStream([str(tmp_path / "t.tar")], name="ocr", slot=0, nslots=1, seed=0, shuffle_window=1))
    assert sorted(got) == (keys[:4] if where == "next_header" else keys)
