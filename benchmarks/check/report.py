"""Deadline, section budgets and the report (JSON + Markdown, rewritten after every result).

The report is written to disk after each result, so whatever stops the check (the global
deadline's watchdog, a crash, a killed machine) leaves the numbers measured so far; the
watchdog adds the reason and ends the process with exit code 3.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
import traceback
from pathlib import Path

NOT_ON_CPU = "not applicable on CPU"


class Budget:
    """Seconds left to a section, never past the global deadline."""

    def __init__(self, seconds: float, deadline: float):
        self.end = min(time.monotonic() + seconds, deadline)

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0


class Report:
    """Sections with their results, targets, and the files they are written to."""

    def __init__(self, out_dir: Path, meta: dict):
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.data = {"meta": meta, "sections": {}, "targets": [], "notes": [], "complete": False}
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._cpu0 = time.process_time()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._children0 = children.ru_utime + children.ru_stime

    @property
    def json_path(self) -> Path:
        return self.out_dir / "gpu_check.json"

    @property
    def md_path(self) -> Path:
        return self.out_dir / "gpu_check.md"

    def section(self, name: str) -> dict:
        return self.data["sections"].setdefault(name, {"status": "running", "results": []})

    def add(self, name: str, *results: dict) -> None:
        with self._lock:
            self.section(name)["results"].extend(results)
        self.write()

    def note(self, text: str) -> None:
        with self._lock:
            self.data["notes"].append(text)
        self.write()

    def run_section(self, name: str, budget_s: float, deadline: float, fn) -> None:
        """Run ``fn(budget)``; its status (ok / failed with the traceback's last line / skipped
        when the deadline has passed), wall and CPU seconds go into the report."""
        sec = self.section(name)
        budget = Budget(budget_s, deadline)
        if budget.expired():
            sec["status"] = "skipped: global deadline reached before the section started"
            self.write()
            return
        t0, c0 = time.monotonic(), time.process_time()
        print(f"[gpu_check] {name} (budget {budget.left():.0f} s)", flush=True)
        try:
            status = fn(budget) or "ok"
        except Exception as e:  # noqa: BLE001 - recorded, the next section still runs
            traceback.print_exc()
            status = f"error: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        sec.update(status=status, wall_s=round(time.monotonic() - t0, 2),
                   cpu_s=round(time.process_time() - c0, 2), budget_s=budget_s)
        self.write()

    def set_targets(self, rows: list[dict]) -> None:
        self.data["targets"] = rows
        self.write()

    def finish(self) -> None:
        self.data["complete"] = True
        self.write()

    def write(self) -> None:
        with self._lock:
            self.data["meta"]["wall_s"] = round(time.monotonic() - self._t0, 2)
            self.data["meta"]["cpu_s"] = round(time.process_time() - self._cpu0, 2)
            # processes the check started and has ended (data engine, loader workers, rung A's pages)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.data["meta"]["cpu_children_s"] = round(children.ru_utime + children.ru_stime - self._children0, 2)
            text = json.dumps(self.data, indent=1, default=str)
            tmp = self.json_path.with_suffix(".json.tmp")
            tmp.write_text(text)
            tmp.replace(self.json_path)
            md = render_markdown(self.data)
            tmp = self.md_path.with_suffix(".md.tmp")
            tmp.write_text(md)
            tmp.replace(self.md_path)


def start_watchdog(report: Report, deadline: float, grace_s: float = 20.0, cleanup=None) -> threading.Timer:
    """At ``deadline`` + ``grace_s`` (a section overran its budget inside a call that cannot be
    interrupted): note it, write the report, run ``cleanup`` (background work), end the process
    (exit 3)."""
    def fire():
        if cleanup is not None:
            cleanup()
        report.note("global deadline reached while a section was running: the report is partial")
        print(f"[gpu_check] deadline: partial report in {report.md_path}", flush=True)
        os._exit(3)

    timer = threading.Timer(max(0.0, deadline - time.monotonic() + grace_s), fire)
    timer.daemon = True
    timer.start()
    return timer


# ------------------------------------------------------------------------------ markdown


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:,.{digits}f}"
    return str(v)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _rows(sections: dict, name: str) -> list[dict]:
    return sections.get(name, {}).get("results", [])


def render_markdown(data: dict) -> str:
    meta, sec = data["meta"], data["sections"]
    card = meta.get("device_name", "?")
    out = [f"# GPU check ({'dry run, CPU' if meta.get('dry') else card})", "",
           f"Card: {card}; torch {meta.get('torch')}, transformers {meta.get('transformers')}; "
           f"wall {meta.get('wall_s')} s, CPU {meta.get('cpu_s')} s; "
           f"{'complete' if data['complete'] else '**partial**'}.", ""]
    out += ["| section | status | wall s | CPU s | budget s |", "|---|---|---|---|---|"]
    out += [f"| {k} | {v.get('status')} | {v.get('wall_s', '-')} | {v.get('cpu_s', '-')} | {v.get('budget_s', '-')} |"
            for k, v in sec.items()]
    out += ["", "## Correctness", "", "| check | error | tolerance | passed |", "|---|---|---|---|"]
    for r in _rows(sec, "correctness"):
        err = r.get("rel_err", r.get("max_abs_diff", r.get("error")))
        out.append(f"| {r['name']} | {_fmt(err)} | {_fmt(r.get('tolerance'))} | {_fmt(r.get('passed'))} |")
    out += ["", "## Encoder: forward + backward images/s", "",
            "| card | mode | views | DeepEncoder img/s | DeepEncoder MFU | SAM img/s (ocrflow) | SAM img/s (transformers) | "
            "ratio | SAM MFU (ocrflow / transformers) | SAM max abs diff | peak GiB (DeepEncoder / SAM / transformers SAM) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in _rows(sec, "encoder speed"):
        if "skipped" in r:
            out.append(f"| {card} | {r['mode']} | {r['skipped']} | | | | | | | | |")
            continue
        out.append(f"| {card} | {r['mode']} | {r['views']} | {_fmt(r['deepencoder_images_per_s'], 2)} | "
                   f"{_pct(r['deepencoder_mfu'])} | {_fmt(r['sam_images_per_s'], 2)} | "
                   f"{_fmt(r['sam_transformers_images_per_s'], 2)} | {_fmt(r['sam_ratio'], 2)}x | "
                   f"{_pct(r['sam_mfu'])} / {_pct(r['sam_transformers_mfu'])} | {_fmt(r['sam_max_abs_diff'])} | "
                   f"{_fmt(r['deepencoder_peak_gib'], 1)} / {_fmt(r['sam_peak_gib'], 1)} / "
                   f"{_fmt(r['sam_transformers_peak_gib'], 1)} |")
    out += ["", "## Decoder slice: training tokens/s (forward + backward + AdamW)", "",
            "| card | layers | seq | tokens/s ocrflow | tokens/s transformers | ratio | MFU ocrflow | MFU transformers | "
            "peak GiB ocrflow / transformers | max abs diff (fp32) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in _rows(sec, "decoder speed"):
        out.append(f"| {card} | {r['layers']} | {r['seq_len']} | {_fmt(r['ocrflow_tokens_per_s'], 0)} | "
                   f"{_fmt(r['transformers_tokens_per_s'], 0)} | {_fmt(r['ratio'], 2)}x | {_pct(r['ocrflow_mfu'])} | "
                   f"{_pct(r['transformers_mfu'])} | {_fmt(r['ocrflow_peak_gib'], 1)} / "
                   f"{_fmt(r['transformers_peak_gib'], 1)} | {_fmt(r['max_abs_diff_fp32'])} |")
    out += ["", "## Training (PP=1, ZeRO-1)", "",
            "| card | stage | preset | steps | loss first 5 -> last 5 | finite | falling | resume bit-exact | s/step |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in _rows(sec, "training"):
        if "skipped" in r or "error" in r:
            out.append(f"| {card} | {r.get('stage')} | {r.get('preset')} | {r.get('skipped', r.get('error'))} | | | | | |")
            continue
        out.append(f"| {card} | {r['stage']} | {r['preset']} ({r['dtype']}) | {r['steps']} | {_fmt(r['first5_mean'])} -> "
                   f"{_fmt(r['last5_mean'])} | {_fmt(r['finite'])} | {_fmt(r['decreasing'])} | "
                   f"{_fmt(r['resume_bit_exact'])} | {_fmt(r['mean_step_time_s'])} |")
    out += ["", "## Rung A: stage 1 reading, held-out pages in unseen font families", "",
            ("| card | preset | steps (stopped by) | train wall s | CER | wrong-page CER | blank CER | constant CER | "
             "untrained CER | word accuracy (needed) | first-letter accuracy | reads |"),
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in _rows(sec, "rung A"):
        if "skipped" in r:
            out.append(f"| {card} | {r['skipped']} | | | | | | | | | | |")
            continue
        out.append(f"| {card} | {r['preset']} ({r['dtype']}) | {r['steps']} of {r['planned_steps']} ({r['stopped_by']}) | "
                   f"{_fmt(r['train_wall_s'], 1)} | {_fmt(r['cer'])} | {_fmt(r['wrong_page_cer'])} | {_fmt(r['blank_cer'])} | "
                   f"{_fmt(r['constant_cer'])} | {_fmt(r['untrained_cer'])} | {_fmt(r['word_accuracy'])} "
                   f"(>= {_fmt(r['word_threshold'])}) | {_fmt(r['first_letter_accuracy'])} | {_fmt(r['reads'])} |")
    out += ["", "## Targets", "", "| target | value | needed | met |", "|---|---|---|---|"]
    for t in data["targets"]:
        out.append(f"| {t['name']} | {_fmt(t['value'], 3)} | {t['needed']} | {t['met'] if isinstance(t['met'], str) else _fmt(t['met'])} |")
    if data["notes"]:
        out += ["", "## Notes", ""] + [f"- {n}" for n in data["notes"]]
    return "\n".join(out) + "\n"
