"""Training data pipeline (train/data.py): decoding, tokenization, modes, mixing, packing, resume.

Builds tiny webdataset shards in a tmp dir (PIL-drawn pages + JSON records in the engine's
shard format) and a small byte-level BPE with the DeepSeek-OCR specials at ids 0..8.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile

import pytest
import torch
import webdataset as wds
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from models.image_processing import num_vision_tokens, preprocess_image
from models.prompts import PROMPT_COARSE, PROMPT_FINE, format_grounded_page
from models.tokenizer import SPECIAL_TOKENS, load_tokenizer
from train.data import IGNORE_INDEX, MODES, SOURCES, _WorkerPipeline, DEFAULTS, build_train_loader
from train.data_sources import ShardStream, TextCorpusStream, expand_urls, stable_rng

WORDS = ("invoice total amount paid page section table figure summary the of and report "
         "quarterly revenue growth margin customer order number date").split()


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))


def _page(i: int, size=(160, 208)) -> tuple[bytes, dict]:
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    lines = [_text(i + k, 4) for k in range(3)]
    for k, line in enumerate(lines):
        d.text((8, 10 + 16 * k), line, fill="black")
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    coarse = "\n".join(lines)
    fine = format_grounded_page([("text", [20, 40 + 60 * k, 900, 90 + 60 * k], ln) for k, ln in enumerate(lines)])
    meta = {"doc_id": f"d{i}", "source_path": f"/x/{i}.pdf", "page": 0, "num_pages": 1,
            "lang": "eng", "script": "Latn", "dpi": 72, "page_size": [size[0], size[1]],
            "image_size": list(size), "source": "synthetic", "data_source": "ocr",
            "labels": {"coarse": {"prompt": PROMPT_COARSE, "text": coarse},
                       "fine": {"prompt": PROMPT_FINE, "text": fine, "boxes": []}}}
    return buf.getvalue(), meta


def _write_shard(path, pages: list[tuple[str, bytes, bytes]]) -> None:
    with wds.TarWriter(str(path)) as w:
        for key, jpg, js in pages:
            w.write({"__key__": key, "jpg": jpg, "json": js})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    for s in range(6):  # 6 shards x 5 pages
        pages = []
        for p in range(5):
            i = s * 5 + p
            jpg, meta = _page(i)
            if i == 7:  # a fine-only page
                del meta["labels"]["coarse"]
            pages.append((f"{i:016x}_{0:05d}", jpg, json.dumps(meta).encode()))
        _write_shard(root / f"ocr-{s:06d}.tar", pages)
    big_jpg, big_meta = _page(99, size=(900, 700))  # larger than a 640 tile: Gundam tiles it
    _write_shard(root / "big-000000.tar", [("big_00000", big_jpg, json.dumps(big_meta).encode())])
    # A shard with a truncated JPEG and a record with broken JSON between good ones.
    good = [_page(50 + k) for k in range(4)]
    bad = [("good_a", good[0][0], json.dumps(good[0][1]).encode()),
           ("broken_jpeg", good[1][0][:200], json.dumps(good[1][1]).encode()),
           ("bad_json", good[2][0], b'{"labels": {"coarse": '),
           ("good_b", good[3][0], json.dumps(good[3][1]).encode())]
    _write_shard(root / "bad-000000.tar", bad)
    corpus = root / "corpus"
    corpus.mkdir()
    for lang in ("eng", "fra", "deu"):
        (corpus / f"{lang}.txt").write_text("\n".join(_text(hash(lang) % 11 + k, 12) for k in range(30)) + "\n")
    return root


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator([_text(i, 12) for i in range(200)], trainer)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    t.save(str(path))
    tk = load_tokenizer(path)
    assert [tk.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(9))
    return tk


def _cfg(data_dir, **kw) -> dict:
    # ocr_weights None: engine pages split coarse/fine by label_kind_weights (what these tests vary)
    cfg = {**DEFAULTS, "shards": [str(data_dir / "ocr-*.tar")], "num_workers": 0, "ocr_weights": None,
           "source_weights": {"ocr": 1.0}, "mode_weights": {"tiny": 1.0}}
    cfg.update(kw)
    return cfg


def _pipe(data_dir, tok, seq_len=1024, mbs=1, seed=0, slot=0, nslots=1, **kw) -> _WorkerPipeline:
    return _WorkerPipeline(_cfg(data_dir, **kw), tok, seq_len=seq_len, micro_batch_size=mbs,
                           seed=seed, slot=slot, nslots=nslots)


def _sample_n(p: _WorkerPipeline, n: int) -> list:
    out = []
    while len(out) < n:
        s = p._draw()
        if s is not None:
            out.append(s)
    return out


def test_loss_mask_covers_label_and_eos_only(data_dir, tok):
    p = _pipe(data_dir, tok, label_kind_weights={"coarse": 0, "fine": 1}, mode_weights={"base": 1})
    s = _sample_n(p, 1)[0]
    n_prompt = next(i for i, x in enumerate(s.labels) if x != IGNORE_INDEX)
    # Independent reference: bos + prompt with 273 image ids (base), then label + eos.
    img = s.images[0]
    assert img.num_tokens == 273
    assert s.input_ids[:n_prompt] == tok.encode_prompt(PROMPT_FINE, [img])
    assert s.input_ids[0] == tok.bos_token_id and s.input_ids.count(tok.image_token_id) == 273
    label = s.input_ids[n_prompt:]
    assert s.labels[n_prompt:] == label and label[-1] == tok.eos_token_id
    assert all(x == IGNORE_INDEX for x in s.labels[:n_prompt])
    text = tok.decode(label[:-1])
    assert text.startswith("<|ref|>text<|/ref|><|det|>[[20, 40, 900, 90]]<|/det|>\n")
    assert s.source == SOURCES.index("ocr") and s.mode == MODES.index("base")


@pytest.mark.parametrize("mode,expected", [("tiny", 73), ("small", 111), ("base", 273),
                                           ("large", 421), ("gundam", None)])
def test_image_tokens_expanded_per_mode(data_dir, tok, mode, expected):
    shards = str(data_dir / ("big-*.tar" if mode == "gundam" else "ocr-*.tar"))
    p = _pipe(data_dir, tok, seq_len=4096, shards=[shards], mode_weights={mode: 1})
    s = _sample_n(p, 1)[0]
    img = s.images[0]
    assert img.mode == mode
    n_img = s.input_ids.count(tok.image_token_id)
    if expected is None:  # 900x700 page: a real tile grid, 100 tokens per 640 tile + global
        cols, rows = img.tile_grid
        assert cols * rows >= 2 and img.tiles.shape[0] == cols * rows
        expected = num_vision_tokens("gundam", img.tile_grid)
        assert expected == (10 * rows) * (10 * cols + 1) + 273
    assert n_img == img.num_tokens == expected
    # The image run is contiguous, right after bos.
    assert s.input_ids[1:1 + n_img] == [tok.image_token_id] * n_img


def _check_batch(batch, tok, seq_len):
    B, T = batch.input_ids.shape
    assert T == seq_len
    runs = 0
    for b in range(B):
        seg = batch.segment_ids[b].tolist()
        k = max(seg)
        n_real = sum(1 for x in seg if x > 0)
        assert seg[:n_real] == sorted(seg[:n_real]) and set(seg[:n_real]) == set(range(1, k + 1))
        assert all(x == 0 for x in seg[n_real:])  # padding only at the end
        pad = slice(n_real, T)
        assert (batch.input_ids[b, pad] == tok.pad_token_id).all()
        assert (batch.labels[b, pad] == IGNORE_INDEX).all() and (batch.source_ids[b, pad] == -1).all()
        for s in range(1, k + 1):
            idx = (batch.segment_ids[b] == s).nonzero().flatten()
            assert batch.position_ids[b, idx].tolist() == list(range(len(idx)))
            assert batch.input_ids[b, idx[0]] == tok.bos_token_id
            assert batch.labels[b, idx[0]] == IGNORE_INDEX  # never learn to predict a bos
        # Image runs in row order match the flat image list in order.
        ids = batch.input_ids[b].tolist()
        t = 0
        while t < T:
            if ids[t] == tok.image_token_id:
                n = 0
                while t < T and ids[t] == tok.image_token_id:
                    n, t = n + 1, t + 1
                assert n == batch.images[runs].num_tokens
                runs += 1
            t += 1
    assert runs == len(batch.images)


def test_packing_fills_rows_with_segments_and_positions(data_dir, tok):
    cfg = _cfg(data_dir, mode_weights={"tiny": 1, "small": 1}, source_weights={"ocr": 0.6, "text": 0.4},
               text_corpus=str(data_dir / "corpus"), text_chunk_tokens=100)
    loader = build_train_loader(cfg, tok, seq_len=512, micro_batch_size=3, seed=1)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]
    for batch in batches:
        _check_batch(batch, tok, 512)
        assert batch.segment_ids.max() >= 2  # several samples per row
    st = loader.stats
    # First-fit packing from a look-ahead buffer keeps padding low for these short samples.
    assert st["padding"] / (st["padding"] + st["tokens"]) < 0.15
    assert st["samples/ocr"] > 0 and st["samples/text"] > 0
    text_rows = batches[0].source_ids == SOURCES.index("text")
    assert (batches[0].mode_ids[text_rows] == -1).all()
    # Text tokens: loss on all but bos.
    lab, ids = batches[0].labels[text_rows], batches[0].input_ids[text_rows]
    is_bos = ids == tok.bos_token_id
    assert (lab[~is_bos] == ids[~is_bos]).all() and (lab[is_bos] == IGNORE_INDEX).all()


def test_source_and_mode_frequencies_follow_weights(data_dir, tok):
    p = _pipe(data_dir, tok, seq_len=2048, vision_shards=[str(data_dir / "ocr-*.tar")],
              text_corpus=str(data_dir / "corpus"), text_chunk_tokens=32,
              source_weights={"ocr": 0.7, "vision": 0.2, "text": 0.1},
              mode_weights={"tiny": 3, "small": 1}, label_kind_weights={"coarse": 1, "fine": 1})
    n = 400
    samples = _sample_n(p, n)
    for src, w in (("ocr", 0.7), ("vision", 0.2), ("text", 0.1)):
        f = sum(s.source == SOURCES.index(src) for s in samples) / n
        assert abs(f - w) < 4 * (w * (1 - w) / n) ** 0.5, (src, f)
    pages = [s for s in samples if s.mode >= 0]
    f_tiny = sum(s.mode == MODES.index("tiny") for s in pages) / len(pages)
    assert abs(f_tiny - 0.75) < 4 * (0.75 * 0.25 / len(pages)) ** 0.5
    fine = sum(tok.token_to_id("<|grounding|>") in s.input_ids for s in pages) / len(pages)
    assert 0.4 < fine < 0.62  # one fine-only page among 30 shifts it slightly above 0.5


def test_missing_source_is_dropped_and_renormalised(data_dir, tok, caplog):
    import train.data as td
    td._warned_dropped = False
    # the schema's own weights (vision 0.2) without vision data: dropped quietly (DEBUG)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        p = _pipe(data_dir, tok, source_weights={"ocr": 0.7, "vision": 0.2, "text": 0.1},
                  text_corpus=str(data_dir / "corpus"))
    assert p.source_w == {"ocr": 0.7, "text": 0.1}
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]
    # a weight the user set without data: warned, once per process
    with caplog.at_level(logging.WARNING, logger="train.data"):
        p = _pipe(data_dir, tok, source_weights={"ocr": 0.6, "vision": 0.3, "text": 0.1},
                  text_corpus=str(data_dir / "corpus"))
        _pipe(data_dir, tok, source_weights={"ocr": 0.6, "vision": 0.3, "text": 0.1},
              text_corpus=str(data_dir / "corpus"))
    assert p.source_w == {"ocr": 0.6, "text": 0.1}
    msgs = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(msgs) == 1 and "vision" in msgs[0]
    with pytest.raises(ValueError, match="unknown key"):
        _pipe(data_dir, tok, source_weights={"ocr": 1, "pdf": 1})


def test_corrupt_samples_are_skipped_counted_and_logged(data_dir, tok, caplog):
    cfg = _cfg(data_dir, shards=[str(data_dir / "bad-*.tar")], shuffle_window=1)
    loader = build_train_loader(cfg, tok, seq_len=256, micro_batch_size=1, seed=0)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        it = iter(loader)
        batches = [next(it) for _ in range(4)]  # keeps going over epochs
    st = loader.stats
    assert st["skipped/bad_image"] >= 1 and st["skipped/bad_json"] >= 1
    assert st["samples/ocr"] >= 4
    text = caplog.text
    assert "broken_jpeg" in text and "bad_image" in text and "bad_json" in text
    assert all(b.input_ids.shape == (1, 256) for b in batches)


def test_rank_split_is_disjoint_and_covers_all(data_dir):
    urls = expand_urls([str(data_dir / "ocr-*.tar")])
    assert urls == sorted(urls) and len(urls) == 6
    world, keys = 3, []
    for rank in range(world):
        st = ShardStream(urls, name="ocr", slot=rank, nslots=world, seed=0)
        it = iter(st)
        mine = [next(it)["__key__"] for _ in range(10)]  # 2 shards x 5 pages = one epoch
        assert st.epoch == 0 and len(set(mine)) == 10
        keys.append(set(mine))
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2]) and not (keys[0] & keys[2])
    assert len(set.union(*keys)) == 30
    # Fewer shards than readers: records are split instead, still disjoint and complete.
    few = urls[:2]
    got = []
    for slot in range(4):
        st = ShardStream(few, name="ocr", slot=slot, nslots=4, seed=0)
        mine = []
        for rec in st:
            if st.epoch > 0:
                break
            mine.append(rec["__key__"])
        assert len(mine) in (2, 3)  # 10 records over 4 readers, balanced
        got.append(set(mine))
    assert sum(len(g) for g in got) == 10 and len(set.union(*got)) == 10


def _same(a, b):
    for k in ("input_ids", "labels", "position_ids", "segment_ids", "source_ids", "mode_ids"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert len(a.images) == len(b.images)
    for x, y in zip(a.images, b.images):
        assert x.mode == y.mode and torch.equal(x.global_view, y.global_view)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_yields_the_uninterrupted_batches(data_dir, tok, num_workers):
    cfg = _cfg(data_dir, num_workers=num_workers, mode_weights={"tiny": 1, "small": 1},
               source_weights={"ocr": 0.8, "text": 0.2}, text_corpus=str(data_dir / "corpus"),
               text_chunk_tokens=60, shuffle_window=3, pack_buffer=4)
    kw = dict(seq_len=400, micro_batch_size=2, seed=7, rank=1, world_size=2)
    ref_it = iter(build_train_loader(cfg, tok, **kw))
    ref = [next(ref_it) for _ in range(7)]
    first = build_train_loader(cfg, tok, **kw)
    it = iter(first)
    for k in range(3):
        _same(next(it), ref[k])
    state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON round trip
    resumed = build_train_loader(cfg, tok, **kw)
    resumed.load_state_dict(state)
    it2 = iter(resumed)
    for k in range(3, 7):
        _same(next(it2), ref[k])
    other = build_train_loader(cfg, tok, **{**kw, "seed": 8})
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def test_text_corpus_chunks_resume_mid_file(data_dir, tok):
    def stream():
        return TextCorpusStream(data_dir / "corpus", tok, chunk_tokens=37, slot=0, nslots=1, seed=3)
    s = stream()
    it = iter(s)
    chunks = [next(it) for _ in range(40)]  # crosses files and an epoch boundary
    assert all(len(c) <= 37 for c, _ in chunks) and any(end for _, end in chunks)
    s2 = stream()
    it2 = iter(s2)
    for _ in range(11):
        next(it2)
    s3 = stream()
    s3.load(s2.state())
    it3 = iter(s3)
    assert [next(it3) for _ in range(29)] == chunks[11:]
    # Concatenated chunks of one file reproduce its full tokenization line by line.
    files = sorted((data_dir / "corpus").glob("*.txt"))
    ref = [t for line in files[0].read_text().splitlines(keepends=True) for t in tok.encode(line)]
    s4 = TextCorpusStream(data_dir / "corpus", tok, chunk_tokens=37, slot=0, nslots=1, seed=3)
    s4.files = [str(files[0])]
    got, it4 = [], iter(s4)
    while True:
        c, end = next(it4)
        got += c
        if end:
            break
    assert got == ref


def test_overlong_truncate_or_skip(data_dir, tok, monkeypatch):
    monkeypatch.setattr("train.data.MAX_CONSECUTIVE_SKIPS", 4)
    n_fixed = len(tok.encode_prompt(PROMPT_FINE, [preprocess_image(Image.new("RGB", (160, 208)), "base")]))
    kw = dict(mode_weights={"base": 1}, label_kind_weights={"fine": 1})
    # Room for the prompt/image span and only part of the label.
    p = _pipe(data_dir, tok, seq_len=n_fixed + 5, **kw)
    s = _sample_n(p, 1)[0]
    assert len(s.input_ids) == n_fixed + 5 and p.stats["truncated"] == 1
    assert s.input_ids.count(tok.image_token_id) == 273 and s.labels[-1] != tok.eos_token_id
    p = _pipe(data_dir, tok, seq_len=n_fixed + 5, overlong="skip", **kw)
    assert p._draw() is None and p.stats["skipped/overlong"] == 1
    # The image span itself never fits: skipped even under "truncate", and a loader that can
    # never fit anything fails loudly instead of spinning.
    p = _pipe(data_dir, tok, seq_len=n_fixed - 1, **kw)
    assert p._draw() is None and p.stats["skipped/overlong"] == 1
    with pytest.raises(RuntimeError, match="consecutive samples were too long"):
        p._fill()


def test_text_from_shard_labels(data_dir, tok):
    p = _pipe(data_dir, tok, shards=[], text_shards=[str(data_dir / "ocr-*.tar")],
              source_weights={"ocr": 0.7, "text": 0.1})
    assert p.source_w == {"text": 0.1}
    s = _sample_n(p, 1)[0]
    assert s.images == [] and s.mode == -1 and tok.image_token_id not in s.input_ids
    assert s.input_ids[0] == tok.bos_token_id and s.input_ids[-1] == tok.eos_token_id
    assert s.labels == [IGNORE_INDEX] + s.input_ids[1:]
    words = tok.decode(s.input_ids[1:-1]).split()
    assert words and all(w in WORDS for w in words)


# ----------------------------------------------------------------- shards read interleaved


def _kind_shard(path, kind: str, n: int, payload: int = 300) -> list[str]:
    """A tar of ``n`` small records ``{kind}{i:04d}`` (json + bin); returns the keys."""
    keys = [f"{kind}{i:04d}" for i in range(n)]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, key in enumerate(keys):
            for ext, data in (("json", json.dumps({"i": i}).encode()), ("bin", bytes([i % 251]) * payload)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return keys


def _keys(stream: ShardStream, n: int) -> list[str]:
    it = iter(stream)
    return [next(it)["__key__"] for _ in range(n)]


def _first_epoch(stream: ShardStream) -> list[str]:
    keys = []
    for rec in stream:
        if stream.epoch > 0:
            return keys
        keys.append(rec["__key__"])


def _stream(urls, **kw) -> ShardStream:
    return ShardStream(urls, **{"name": "ocr", "slot": 0, "nslots": 1, "seed": 5, "shuffle_window": 4, **kw})


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """Six single-kind shards of different sizes (a..f)."""
    root = tmp_path_factory.mktemp("kinds")
    sizes = {"a": 20, "b": 3, "c": 11, "d": 16, "e": 7, "f": 9}
    return {k: (str(root / f"{k}.tar"), _kind_shard(root / f"{k}.tar", k, n)) for k, n in sizes.items()}


def _old_reader(urls, *, seed, window, epochs, name="ocr") -> list[str]:
    """The reader before open_shards, written independently of ShardStream: each epoch the
    shards in a seeded order, one after another, records (grouped by key with ``tarfile``)
    permuted inside windows of ``window``."""
    out = []
    for epoch in range(epochs):
        order = list(urls)
        stable_rng(seed, name, 0, "shards", epoch).shuffle(order)
        for url in order:
            with tarfile.open(url) as tf:
                keys = list(dict.fromkeys(m.name.split(".")[0] for m in tf.getmembers()))
            for w in range(0, len(keys), window):
                win = keys[w:w + window]
                stable_rng(seed, name, os.path.basename(url), epoch, w // window).shuffle(win)
                out += win
    return out


def test_one_open_shard_reads_as_before_and_old_positions_resume(kinds):
    urls = sorted(u for u, _ in kinds.values())
    per_epoch = sum(len(k) for _, k in kinds.values())
    ref = _old_reader(urls, seed=5, window=4, epochs=3)
    assert _keys(_stream(urls, open_shards=1), 3 * per_epoch) == ref
    # A position saved before open_shards existed: epoch 1, third shard, 3 records into it.
    order = list(urls)
    stable_rng(5, "ocr", 0, "shards", 1).shuffle(order)
    done = per_epoch + sum(len(kinds[os.path.basename(u)[0]][1]) for u in order[:2]) + 3
    old = {"epoch": 1, "shard_pos": 2, "index": 3}
    s = _stream(urls, open_shards=1)
    s.load(old)
    assert _keys(s, 2 * per_epoch + 10 - done) == ref[done:2 * per_epoch + 10]
    # ...and with several open shards it continues the same epoch, nothing lost or repeated.
    s = _stream(urls, open_shards=3)
    s.load(old)
    assert sorted(_keys(s, 2 * per_epoch - done)) == sorted(ref[done:2 * per_epoch])


def test_open_shards_interleave_kinds_instead_of_blocks(tmp_path):
    urls = [str(tmp_path / f"{k}.tar") for k in "wxyz"]
    for u, k in zip(urls, "wxyz"):
        _kind_shard(u, k, 64)

    def kinds_per_window(keys):
        return [len({k[0] for k in keys[i:i + 32]}) for i in range(len(keys) - 31)]

    mixed = _keys(_stream(urls, open_shards=4, shuffle_window=8), 128)
    assert min(kinds_per_window(mixed)) >= 3
    blocks = _keys(_stream(urls, open_shards=1, shuffle_window=8), 128)
    assert max(kinds_per_window(blocks)) == 2 and min(kinds_per_window(blocks)) == 1
    # Picks weigh shards by size: a small shard is spread over the big one, not used up first.
    small, big = str(tmp_path / "small.tar"), str(tmp_path / "big.tar")
    _kind_shard(small, "s", 16)
    _kind_shard(big, "B", 112)
    keys = _keys(_stream([small, big], open_shards=2), 128)
    at = [i for i, k in enumerate(keys) if k[0] == "s"]
    assert len(at) == 16 and at[-1] >= 64 and at[7] >= 16


def test_open_shards_give_every_record_once_per_epoch(kinds):
    urls = [u for u, _ in kinds.values()]
    every = sorted(k for _, keys in kinds.values() for k in keys)
    s = _stream(urls, open_shards=4, shuffle_window=5)
    got = _keys(s, 3 * len(every))
    epochs = [got[i * len(every):(i + 1) * len(every)] for i in range(3)]
    assert all(sorted(e) == every for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2] and s.epoch == 2
    # Several readers (nodes x workers): disjoint shares that cover everything.
    shares = [_first_epoch(_stream(urls, open_shards=2, slot=r, nslots=3)) for r in range(3)]
    assert sum(len(x) for x in shares) == len(every) and set().union(*shares) == set(every)


def test_open_shards_resume_exactly(kinds):
    urls = [u for u, _ in kinds.values()]
    per_epoch = sum(len(k) for _, k in kinds.values())
    ref = _keys(_stream(urls, open_shards=4), 2 * per_epoch + 20)
    for cut in (1, 9, 37, per_epoch - 1, per_epoch, per_epoch + 13):
        a = _stream(urls, open_shards=4)
        assert _keys(a, cut) == ref[:cut]
        b = _stream(urls, open_shards=4)
        b.load(json.loads(json.dumps(a.state())))
        assert _keys(b, len(ref) - cut) == ref[cut:], cut


def test_truncated_shard_among_open_ones(kinds, tmp_path, caplog):
    shards = {k: kinds[k] for k in "acdf"}
    whole = [u for u, _ in shards.values()]
    with tarfile.open(shards["a"][0]) as tf:
        members = tf.getmembers()
    cut = members[29].offset_data + 100  # inside record a0014's bin member
    damaged = tmp_path / "a.tar"
    damaged.write_bytes(open(shards["a"][0], "rb").read()[:cut])
    urls = [str(damaged), *whole[1:]]
    n = 14 + sum(len(shards[k][1]) for k in "cdf")
    s = _stream(urls, open_shards=4, seed=2)
    with caplog.at_level(logging.WARNING, logger="train.data_sources"):
        got = _first_epoch(s)
    assert len(got) == n and s.shard_errors == 1 and "a.tar after 14 records" in caplog.text
    assert sorted(got) == sorted(shards["a"][1][:14] + [k for c in "cdf" for k in shards[c][1]])
    # The other shards' own (window-permuted) order is the same as with an intact shard.
    intact = _keys(_stream(whole, open_shards=4, seed=2), n + 6)
    for c in "cdf":
        assert [k for k in got if k[0] == c] == [k for k in intact if k[0] == c]
    # A position taken after the error still resumes exactly.
    ref = _keys(_stream(urls, open_shards=4, seed=2), n + 20)
    for at in (5, n - 3, n + 1):
        a = _stream(urls, open_shards=4, seed=2)
        _keys(a, at)
        b = _stream(urls, open_shards=4, seed=2)
        b.load(a.state())
        assert _keys(b, n + 20 - at) == ref[at:]


def test_empty_and_whitespace_labels_are_skipped_and_counted(tmp_path, tok):
    """A page whose label text is empty or only whitespace teaches image -> end token: skipped,
    counted as skipped/empty_label, never packed."""
    pages = []
    for i, text in enumerate(["", " \n\t ", None, None]):
        jpg, meta = _page(60 + i)
        if text is not None:
            meta["labels"]["coarse"]["text"] = text
        pages.append((f"p{i}", jpg, json.dumps(meta).encode()))
    _write_shard(tmp_path / "e-000000.tar", pages)
    p = _pipe(tmp_path, tok, shards=[str(tmp_path / "e-*.tar")], shuffle_window=1,
              label_kind_weights={"coarse": 1.0, "fine": 0.0}, ocr_weights=None)
    samples = _sample_n(p, 6)
    assert p.stats["skipped/empty_label"] >= 2
    eos = tok.eos_token_id
    for s in samples:  # every trained label has text before its end token
        label = [t for t in s.labels if t != IGNORE_INDEX]
        assert len(label) > 1 and label[-1] == eos


def test_same_shards_in_another_folder_are_read_in_the_same_order(kinds, tmp_path):
    """The record order depends on the shards' names, not their folder: a copy of a dataset in a
    temporary directory trains the same model (it did not: the ladder's short A1 run gave
    unseen-font CER 0.650 and 0.825 from identical pages in two folders)."""
    import shutil

    urls = [kinds[k][0] for k in "acd"]
    copies = []
    for u in urls:
        (tmp_path / "copy").mkdir(exist_ok=True)
        copies.append(str(shutil.copy(u, tmp_path / "copy" / os.path.basename(u))))
    for kw in ({}, {"open_shards": 2}):
        assert _keys(_stream(urls, **kw), 60) == _keys(_stream(copies, **kw), 60)
