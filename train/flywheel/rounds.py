"""Flywheel rounds: train the recognizer, label the pool, accept, measure, reassemble, report.

Round k (``<out>/round_<k>/``):

1. ``train/``: the recognizer trained on the seed patches plus every patch accepted in rounds
   < k (round 0 from the recognizer's start: PP-OCRv4's shipped weights for ``kind=ppocr``, from
   scratch for ``kind=paper``; then continuing from round k-1's model), by the trainer of
   ``flywheel.recognizer.kind`` (``recognizers.py``; it checkpoints and resumes itself); its
   exported model is ``train/model``. The training
   patches (seed, collage, accepted) are first interleaved in one seeded order into small shards
   (``train_data/``, ``data_engine.shards.mix_shards``).
2. ``calibration.json``: per language (and per patch source: refused text-layer box, detector
   line) the acceptance threshold, calibrated on ``data/calib`` (``accept.py`` ``calibrate``):
   lines of calibration pages cut as the pool is and scored against their truth, else held-out
   seed lines; the lowest confidence whose labels reach ``accept.target_cer`` there.
3. ``labels.jsonl``: the pool patches not yet accepted, labelled in fixed batches (one JSON line
   per finished batch, fsynced, in batch order), each with text, confidence and the acceptance
   verdict; read in this process or on Ray actors (``flywheel.label.executor``, ``readers.py``).
4. ``accepted/<lang>.tar``: the patches accepted in this round (patch shards, training format).
5. ``pages/flywheel-000000.tar``: the complete pages so far (every line found on the page
   accepted, in this round or before), reassembled into page-level fine labels with the page's
   trusted text-layer lines (engine shard format, ``source: flywheel``) for stage 2, and the
   pages with at least ``page_erase_share`` of their lines accepted, the others painted white
   and left out of the label; other partial pages stay line patches. Source files are reopened
   relative to the run directory.
6. ``report.json``: per language the recognizer's CER on held-out gold patches (and with blank
   images, the image-blind control), Tesseract's CER on the same patches, patches accepted and
   rejected by reason, and the CER of accepted (and rejected) labels against ground truth.

Each step's output is written atomically and skipped when present, and batches already in
``labels.jsonl`` are not labelled again, so ``kill -9`` then the same command continues without
redoing committed work; greedy decoding in fixed batches makes the result the same.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from data_engine.flywheel.accept import calibrate, judge, length_range, threshold_of
from data_engine.flywheel.canvas import is_rtl
from data_engine.flywheel.dataset import UNSEEN_DIR
from data_engine.flywheel.linepages import LineLanguage
from data_engine.flywheel.patches import BLOCK, Patch, read_patch_shard, write_patch_shard
from data_engine.flywheel.reassemble import complete_pages, empty_page_counts, write_page_shard
from data_engine.metrics import corpus_cer
from data_engine.reading_metrics import reading_scores
from data_engine.shards import mix_shards

from .recognizer import canvas_side
from .recognizers import make_recognizer, round_steps


def _key(spec: str) -> str:
    return spec.replace(":", "_").replace("-", "_")


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def read_label_batches(path: Path) -> dict[int, list[dict]]:
    """Finished batches of a labels.jsonl; a torn last line (a kill mid-write) is cut off so
    that the batches appended next start on a line of their own."""
    done = {}
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[int(rec["batch"])] = rec["rows"]
    return done


class RoundRunner:
    """Runs rounds over a prepared data directory (``data_engine.flywheel.dataset``)."""

    def __init__(self, cfg, out_dir: Path, languages: list[str], log=print):
        self.cfg, self.out, self.langs, self.log = cfg, Path(out_dir), list(languages), log
        self.data = self.out / "data"
        self.accept_cfg = cfg.accept
        self.rec = make_recognizer(cfg, self.data)  # flywheel.recognizer.kind: train / load / read
        self.seed = {s: list(read_patch_shard(self.data / "seed" / f"{_key(s)}.tar", images=False))  # texts, boxes
                     for s in self.langs}
        self.truth = json.loads((self.data / "pool_truth.json").read_text(encoding="utf-8"))
        done = self.data / "DONE"  # per language: the patches of each file (prepare_data)
        self.made = json.loads(done.read_text()) if done.is_file() else {}
        self.bounds = {s: length_range([(p.text, p.bbox) for p in self.seed[s]], self.accept_cfg.length_slack)
                       for s in self.langs}

    # ------------------------------------------------------------------ helpers
    def rdir(self, k: int) -> Path:
        return self.out / f"round_{k}"

    def accepted_before(self, k: int) -> dict[str, list[Patch]]:
        out = defaultdict(list)
        for j in range(k):
            for s in self.langs:
                path = self.rdir(j) / "accepted" / f"{_key(s)}.tar"
                if path.is_file():
                    out[s] += list(read_patch_shard(path))
        return out

    def spec_of(self, p: Patch) -> str:
        return self.spec_of_lang(p.lang)

    def read(self, model, tok, patches: list[Patch]) -> list[tuple[str, float, bool]]:
        """(text, confidence, finished) per patch, decoded as the labelling decodes."""
        return self.rec.read(model, tok, patches)

    # ------------------------------------------------------------------ 1. train
    def training_shards(self, k: int) -> list[Path]:
        """Seed (and collage) shards plus the non-empty accepted shards of rounds < k (none in the
        control run, ``recognizer.train_on_accepted=false``), each ``recognizer.accepted_repeats`` times."""
        shards = [self.data / "seed" / f"{_key(s)}.tar" for s in self.langs if self.seed[s]]
        shards += [self.data / "collage" / f"{_key(s)}.tar" for s in self.langs if self.made.get(s, {}).get("collage")]
        repeats = self.cfg.recognizer.accepted_repeats
        for j in range(k if self.cfg.recognizer.train_on_accepted else 0):
            counts = json.loads((self.rdir(j) / "ACCEPTED").read_text())
            for s in (s for s in self.langs if counts.get(s)):
                shard = self.rdir(j) / "accepted" / f"{_key(s)}.tar"
                shards.append(shard)
                for r in range(1, repeats):  # oversampled: copies under their own keys (mix_shards wants unique keys)
                    copy = self.rdir(k) / "accepted_copies" / f"round{j}_{_key(s)}_{r}.tar"
                    if not copy.is_file():
                        write_patch_shard(copy, [replace(p, key=f"{p.key}_r{r}") for p in read_patch_shard(shard)],
                                          canvas_side(self.cfg.recognizer.mode), self.cfg.recognizer.stretch)
                    shards.append(copy)
        return shards

    def train(self, k: int) -> Path:
        rd = self.rdir(k)
        model_dir = rd / "train" / "model"
        if (rd / "TRAINED").is_file():
            return model_dir
        shards = self.training_shards(k)
        if not shards:
            raise ValueError("no seed patches in any language: nothing to train the recognizer on "
                             "(give born-digital pages with a trustworthy text layer)")
        rc = self.cfg.recognizer
        init = str(self.rdir(k - 1) / "train" / "model") if k > 0 and rc.continue_training else None
        # one seeded mix of every kind (languages, collage, accepted labels) in small shards:
        # read shard after shard, the sources would be trained on in long single-kind blocks
        mixed = mix_shards(shards, rd / "train_data", seed=self.cfg.seed + k)
        t0 = time.process_time()
        res = self.rec.train(rd / "train", mixed, steps=round_steps(rc, k), seed=self.cfg.seed + k, init_from=init)
        _atomic_json(rd / "TRAINED", {"final_loss": res.get("final_loss"), "steps": res.get("steps"),
                                      "cpu_s_this_process": round(time.process_time() - t0, 1),
                                      "shards": [str(s) for s in shards]})
        return Path(res["export_dir"])

    # ------------------------------------------------------------------ 2. calibrate
    def calibration(self, k: int, model, tok) -> dict:
        """Per language (and per cut): the acceptance threshold calibrated on the calibration lines
        (read by round k's model; those failing another filter do not count), written once per
        round. The pool of round k holds only the lines earlier rounds did not accept, the harder
        ones; so does its calibration: the calibration lines that earlier rounds' thresholds
        accepted are left out (``accepted_keys`` of their ``calibration.json``). Without that, a
        round-1 threshold set on every line let the remaining pool's labels through at CER 0.12-0.15
        against 0.10 on the calibration lines (docs/flywheel.md)."""
        path = self.rdir(k) / "calibration.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        ac, out = self.accept_cfg, {}
        earlier = [json.loads((self.rdir(j) / "calibration.json").read_text(encoding="utf-8")) for j in range(k)]
        for s in self.langs:
            shard = self.data / "calib" / f"{_key(s)}.tar"
            taken = {key for cal_j in earlier for key in cal_j.get(s, {}).get("accepted_keys", [])}
            lines = [p for p in (read_patch_shard(shard) if shard.is_file() else []) if p.key not in taken]
            reads = self.read(model, tok, lines)
            rows = [(conf, p.text, text, p.source, p.key) for p, (text, conf, fin) in zip(lines, reads)
                    if judge(text, confidence=0.0, finished=fin, bbox=p.bbox, script=p.script, cfg=ac,
                             length_bounds=self.bounds[s], min_confidence=float("-inf"),
                             text_layer=p.extra.get("text_layer")) is None]
            cal = calibrate([r[:3] for r in rows], ac.target_cer, ac.min_calibration, ac.cer_bound_z)
            cal.update(held_out=len(lines), left_out_accepted=len(taken),
                       cer_all=corpus_cer((p.text, r[0]) for p, r in zip(lines, reads)))
            # per cut (refused text-layer box, detector line): the pool's lines of one cut are
            # labelled at the threshold calibrated on the calibration lines of the same cut
            cal["by_source"] = {src: calibrate([r[:3] for r in rows if r[3] == src], ac.target_cer, ac.min_calibration, ac.cer_bound_z)
                                for src in sorted({p.source for p in lines})}
            for c in [cal, *cal["by_source"].values()]:
                if taken and c["status"] == "too_few":  # earlier rounds took the lines: nothing left to trust
                    c.update(status="unreachable", exhausted=True)
            if cal["status"] == "too_few":
                cal["note"] = (f"{len(rows)} of {len(lines)} held-out lines pass the other filters (fewer than "
                               f"accept.min_calibration={ac.min_calibration}): min_confidence={ac.min_confidence} is used")
            elif cal["status"] == "unreachable" and not any(c["status"] == "calibrated" for c in cal["by_source"].values()):
                cal["note"] = (f"no confidence level reaches CER <= {ac.target_cer} on the held-out lines"
                               f"{' left by earlier rounds' if taken else ''}: nothing is accepted in this language this round")
            thresholds = cut_thresholds(cal, ac.min_confidence)
            cal["accepted_keys"] = [r[4] for r in rows if r[0] >= thresholds.get(r[3], thresholds["*"])]
            out[s] = cal
        self.log(f"[flywheel] round {k}: acceptance thresholds " + ", ".join(
            f"{s} {c['status']} {c['threshold']}" + "".join(
                f" ({src} {b['status']} {b['threshold']})" for src, b in c["by_source"].items()) for s, c in out.items()))
        _atomic_json(path, out)
        return out

    def min_confidence(self, k: int) -> dict[str, dict[str, float]]:
        """The confidence threshold per language and patch source in round k (``cut_thresholds``)."""
        path = self.rdir(k) / "calibration.json"
        cal = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return {s: cut_thresholds(cal.get(s), self.accept_cfg.min_confidence) for s in self.langs}

    # ------------------------------------------------------------------ 3.-4. label + accept
    def label(self, k: int, model, tok, pool: list[Patch], model_dir: Path | None = None) -> list[dict]:
        """Label the batches of ``pool`` not yet in ``labels.jsonl`` (``model_dir``: the round's
        exported model, which Ray actors load; default ``round_k/train/model``)."""
        bs = self.cfg.label.batch_size
        path = self.rdir(k) / "labels.jsonl"
        done = read_label_batches(path)
        n_batches = -(-len(pool) // bs)
        todo = [b for b in range(n_batches) if b not in done]
        thresholds = self.min_confidence(k)
        if todo:
            reader = self.rec.reader(model, tok, model_dir or self.rdir(k) / "train" / "model",
                                     self.cfg.threads, self.log)
            try:
                with open(path, "a", encoding="utf-8") as f:
                    for b, reads in zip(todo, reader.map([pool[b * bs:(b + 1) * bs] for b in todo])):
                        done[b] = []
                        for p, (text, conf, fin) in zip(pool[b * bs:(b + 1) * bs], reads):
                            why = judge(text, confidence=conf, finished=fin, bbox=p.bbox, script=p.script,
                                        cfg=self.accept_cfg, length_bounds=self.bounds[self.spec_of(p)],
                                        min_confidence=thresholds[self.spec_of(p)].get(
                                            p.source, thresholds[self.spec_of(p)]["*"]),
                                        text_layer=p.extra.get("text_layer"))
                            done[b].append({"key": p.key, "lang": p.lang, "text": text,
                                            "confidence": round(conf, 4), "finished": fin, "reason": why})
                        f.write(json.dumps({"batch": b, "rows": done[b]}, ensure_ascii=False) + "\n")
                        f.flush()
                        os.fsync(f.fileno())
                        self.log(f"[flywheel] round {k}: labelled {min(len(pool), (b + 1) * bs)}/{len(pool)}")
            finally:
                reader.close()
        return [r for b in range(n_batches) for r in done[b]]

    def write_accepted(self, k: int, pool: list[Patch], rows: list[dict]) -> None:
        rd = self.rdir(k)
        if (rd / "ACCEPTED").is_file():
            return
        by_key = {p.key: p for p in pool}
        per = defaultdict(list)
        for r in rows:
            if r["reason"] is None:
                p = by_key[r["key"]]
                per[self.spec_of(p)].append(replace(p, text=r["text"], extra={"round": k, "confidence": r["confidence"]}))
        for s in self.langs:
            write_patch_shard(rd / "accepted" / f"{_key(s)}.tar", per[s], canvas_side(self.cfg.recognizer.mode),
                              self.cfg.recognizer.stretch)
        _atomic_json(rd / "ACCEPTED", {s: len(per[s]) for s in self.langs})

    def complete_pages(self, accepted: dict[str, list[Patch]]) -> tuple[dict, dict]:
        """Page labels of the pages whose every pool line is accepted (``reassemble.complete_pages``:
        plus the page's trusted text-layer lines, seed and calibration), and the page counts."""
        pool = [p for s in self.langs for p in read_patch_shard(self.data / "pool" / f"{_key(s)}.tar", images=False)]
        calib = [self.data / "calib" / f"{_key(s)}.tar" for s in self.langs]
        known = [p for ps in self.seed.values() for p in ps] + \
            [p for c in calib if c.is_file() for p in read_patch_shard(c, images=False)]
        return complete_pages([p for ps in accepted.values() for p in ps], pool, known,
                              frozenset(s for s in {p.script for p in pool} if is_rtl(s)),
                              erase_share=self.cfg.page_erase_share)

    # ------------------------------------------------------------------ 5. measure
    def gold_cer(self, model, tok) -> dict:
        """Per language: the recognizer on the gold lines (CER, loss with real / blank images) and
        on the unseen-word gold lines, each with its reading controls (``line_reading``)."""
        out = {}
        for s in self.langs:
            gold = list(read_patch_shard(self.data / "gold" / f"{_key(s)}.tar"))
            if not gold:
                out[s] = {"gold_n": 0}
                continue
            # the constant-output control writes the most frequent training (seed) label
            train_labels = [p.text for p in self.seed[s] if p.text.strip()] or None
            g = line_reading(self.rec, model, tok, gold, train_labels)
            texts = [p.text for p in gold]
            loss = self.rec.nll(model, tok, [p.image for p in gold], texts, gold)
            loss_blind = self.rec.nll(model, tok, g["blank_images"], texts, gold)
            g["reading"]["loss_ratio"] = loss / loss_blind if loss is not None and loss_blind else None
            out[s] = {"gold_n": len(gold), "cer": g["cer"],
                      "cer_by_kind": {kind: corpus_cer((p.text, r[0]) for p, r in zip(gold, g["reads"]) if p.kind == kind)
                                      for kind in sorted({p.kind for p in gold})},
                      "cer_blind": g["cer_blind"], "loss": loss, "loss_blind": loss_blind,
                      "examples": [{"ref": p.text, "pred": r[0]} for p, r in zip(gold[:3], g["reads"][:3])],
                      # the reading verdict (wrong-line control, constant output, words above chance): docs/evaluation.md
                      "reading": g["reading"]}
            unseen_path = self.data / UNSEEN_DIR / f"{_key(s)}.tar"
            unseen = list(read_patch_shard(unseen_path)) if unseen_path.is_file() else []
            if unseen:  # words no training page has: reading letters, not recognising known words
                u = line_reading(self.rec, model, tok, unseen, train_labels)
                out[s].update(cer_unseen=u["cer"], cer_unseen_blind=u["cer_blind"], unseen_n=len(unseen),
                              reading_unseen=u["reading"])
        return out

    def tesseract(self) -> dict:
        """Tesseract CER on the gold patches (and on the unseen-word gold, ``cer_unseen``) per
        language (computed once per run)."""
        path = self.data / "tesseract.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        from data_engine.flywheel.baseline import availability, read_line

        out = {}
        for s in self.langs:
            gold = list(read_patch_shard(self.data / "gold" / f"{_key(s)}.tar"))
            code, why = availability(LineLanguage.parse(s).lang)
            if not self.cfg.baseline.tesseract:
                out[s] = {"cer": None, "note": "disabled (baseline.tesseract=false)"}
            elif code is None or not gold:
                out[s] = {"cer": None, "note": why or "no gold patches"}
            else:
                unseen_path = self.data / UNSEEN_DIR / f"{_key(s)}.tar"
                unseen = list(read_patch_shard(unseen_path)) if unseen_path.is_file() else []
                out[s] = {"cer": corpus_cer((p.text, read_line(p.image, p.lang, block=p.kind == BLOCK)) for p in gold),
                          "cer_unseen": corpus_cer((p.text, read_line(p.image, p.lang, block=p.kind == BLOCK))
                                                   for p in unseen) if unseen else None,
                          "lang": code}
        _atomic_json(path, out)
        return out

    # ------------------------------------------------------------------ one round
    def run_round(self, k: int) -> dict:
        rd = self.rdir(k)
        if (rd / "report.json").is_file():
            return json.loads((rd / "report.json").read_text(encoding="utf-8"))
        rd.mkdir(parents=True, exist_ok=True)
        t0 = time.process_time()
        prior = self.accepted_before(k)
        model_dir = self.train(k)
        model, tok = self.rec.load(model_dir)
        taken = {p.key for ps in prior.values() for p in ps}
        pool = [p for s in self.langs for p in read_patch_shard(self.data / "pool" / f"{_key(s)}.tar")
                if p.key not in taken]
        calibration = self.calibration(k, model, tok)
        rows = self.label(k, model, tok, pool, model_dir)
        self.write_accepted(k, pool, rows)
        accepted = self.accepted_before(k + 1)
        pages, page_counts = self.complete_pages(accepted)
        n_pages = write_page_shard(rd / "pages" / "flywheel-000000.tar", pages, root=self.out)
        gold, tess = self.gold_cer(model, tok), self.tesseract()
        langs = {}
        kind_of = {p.key: p.kind for p in pool}  # line | block
        for s in self.langs:
            lang_rows = [r for r in rows if self.spec_of_lang(r["lang"]) == s]
            acc = [r for r in lang_rows if r["reason"] is None]
            rej = [r for r in lang_rows if r["reason"] is not None]
            by_kind = {kind: {"labelled": sum(kind_of[r["key"]] == kind for r in lang_rows),
                              "accepted": sum(kind_of[r["key"]] == kind for r in acc)}
                       for kind in sorted({kind_of[r["key"]] for r in lang_rows})}
            langs[s] = {
                "seed_patches": len(self.seed[s]),
                "trained_on_accepted": len(prior.get(s, [])) if self.cfg.recognizer.train_on_accepted else 0,
                "labelled": len(lang_rows), "accepted": len(acc), "rejected": len(rej), "by_kind": by_kind,
                "rejected_by_reason": dict(Counter(r["reason"] for r in rej)),
                "accepted_total": len(accepted.get(s, [])),
                "pages": page_counts.get(LineLanguage.parse(s).lang, empty_page_counts()),
                "accepted_label_cer": corpus_cer((self.truth[r["key"]], r["text"]) for r in acc if r["key"] in self.truth),
                "rejected_label_cer": corpus_cer((self.truth[r["key"]], r["text"]) for r in rej if r["key"] in self.truth),
                "recognizer": gold[s], "tesseract": tess[s], "calibration": calibration[s],
                "note": None if self.seed[s] or self.made.get(s, {}).get("collage") else
                "no seed patches: the recognizer has not seen this script in round 0; its labels are expected "
                "to be rejected",
            }
        report = {"round": k, "languages": langs, "pages_reassembled": n_pages,
                  "train": json.loads((rd / "TRAINED").read_text()), "cpu_s_round_this_process": round(time.process_time() - t0, 1)}
        _atomic_json(rd / "report.json", report)
        return report

    def spec_of_lang(self, lang: str) -> str:
        return next((s for s in self.langs if LineLanguage.parse(s).lang == lang), lang)


def cut_thresholds(cal: dict | None, fixed: float) -> dict[str, float]:
    """One language's confidence threshold per patch source (cut) from its calibration
    (``"*"``: the language's own, for sources without one): calibrated, +inf when unreachable,
    else the ``fixed`` one."""
    lang = threshold_of(cal, fixed)
    return {"*": lang, **{src: threshold_of(c, lang) for src, c in (cal or {}).get("by_source", {}).items()
                          if c.get("status") != "too_few"}}


def line_reading(rec, model, tok, patches: list[Patch], train_labels: list[str] | None = None) -> dict:
    """The recognizer ``rec`` on labelled line patches and its reading controls, every line a
    "page" of ``data_engine.reading_metrics``: CER, word accuracy, the same lines as blank images
    of their size (image-blind), each prediction against another line's reference (wrong line,
    the fixed derangement), one constant output (the most frequent of ``train_labels``, else of
    the references) and the verdict. Also returns the reads and blank images for the caller."""
    from PIL import Image

    reads = rec.read(model, tok, patches)
    blank_images = [Image.new("RGB", p.image.size, "white") for p in patches]
    blank = rec.read_images(model, tok, blank_images, patches)
    texts = [p.text for p in patches]
    return {"cer": corpus_cer(zip(texts, (r[0] for r in reads))),
            "cer_blind": corpus_cer(zip(texts, (r[0] for r in blank))),
            "reading": reading_scores([r[0] for r in reads], texts, train_labels=train_labels,
                                      blank_preds=[r[0] for r in blank]),
            "reads": reads, "blank_images": blank_images}
