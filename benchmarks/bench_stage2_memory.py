"""Stage-2 host memory per pipeline rank: today's whole-model construction vs per-stage construction.

Three phases, each in fresh processes so that peak resident memory (ru_maxrss) is per phase:
  1. export   one process materialises the model stage by stage (random init, per-part seeds,
              ``--dtype``), each stage writes its file of a sharded checkpoint
              (``write_checkpoint_shard``), then the index is written from the headers: the
              per-stage export of ``train.stage2.export_pipeline``, without DeepSpeed.
  2. before   one process does what every stage-2 rank did before: build the whole model (fp32,
              CPU, random init) and load the checkpoint into it (``build_stage2_model``). Every
              rank paid this, so it is the "before" figure of each rank. One process only: four
              at once would need 4x this.
  3. after    ``--pp`` processes (gloo, DeepSpeed CPU accelerator) each build only their stage
              with ``build_stage2_pipeline`` (meta model, this stage materialised in
              ``--dtype``, only its tensors read from the checkpoint).
Prints, per rank: stage, parameters, stage bytes in ``--dtype``, resident memory after imports,
peak resident memory before / after. The checkpoint is written under ``--workdir`` (default
in /tmp) and deleted at the end unless ``--keep``.

    python benchmarks/bench_stage2_memory.py --preset tiny            # seconds, a smoke run
    nice python benchmarks/bench_stage2_memory.py                     # deepseek-ocr, PP=4: ~15 GB free RAM, ~7 GB disk
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
GB = 1e9


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1))


# ------------------------------------------------------------------------------- phases


def phase_export(args) -> dict:
    import torch

    from models.checkpoint import build_meta_model, write_checkpoint_index, write_checkpoint_shard
    from models.config import get_preset
    from train.pipeline import build_units, default_partition
    from train.stage_build import init_stage_weights

    cfg = get_preset(args.preset)
    dtype = getattr(torch, DTYPES[args.dtype])
    parts = default_partition(cfg.decoder.num_hidden_layers, args.pp)
    ckpt = Path(args.workdir) / "checkpoint"
    ckpt.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()
    for s in range(args.pp):  # what rank s does at the end of training, one stage at a time
        model = build_meta_model(cfg)
        units, bounds = build_units(model, parts)
        init_stage_weights(model, units[bounds[s]:bounds[s + 1]], "cpu", dtype, seed=0)
        sd = {k: v for k, v in model.state_dict().items() if not v.is_meta}
        write_checkpoint_shard(sd, ckpt, s, args.pp, dtype)
        del model, units, sd
    write_checkpoint_index(ckpt, cfg, args.pp, dtype)
    return {"checkpoint": str(ckpt), "bytes": sum(f.stat().st_size for f in ckpt.glob("*.safetensors")),
            "cpu_s": time.process_time() - t0, "peak_rss": peak_rss()}


def phase_before(args) -> dict:
    import deepspeed  # noqa: F401 - a training rank has it loaded: the same baseline as "after"
    import torch

    from train.stage2 import build_stage2_model

    torch.manual_seed(0)
    base = current_rss()
    t0 = time.process_time()
    model = build_stage2_model({"model": {"init_from": str(Path(args.workdir) / "checkpoint")}})
    return {"params": model.num_parameters(), "base_rss": base, "peak_rss": peak_rss(),
            "cpu_s": time.process_time() - t0}


def _after_rank(rank: int, args, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.pp), LOCAL_SIZE=str(args.pp),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    import torch

    torch.set_num_threads(1)
    from train.distributed import init_distributed
    from train.stage2 import build_stage2_pipeline

    init_distributed({"train": {"backend": "gloo"}})
    base = current_rss()
    t0 = time.process_time()
    cfg = {"model": {"init_from": str(Path(args.workdir) / "checkpoint")},
           "train": {"pp": args.pp, "freeze_sam": True}, "deepspeed": {"dtype": args.dtype}}
    module, _, n_model = build_stage2_pipeline(cfg, None, args.pp, torch.device("cpu"), seed=0)
    params = list(module.parameters())
    out = {"rank": rank, "stage": module.stage_id, "params": sum(p.numel() for p in params),
           "stage_bytes": sum(p.numel() * p.element_size() for p in params), "model_params": n_model,
           "base_rss": base, "rss": current_rss(), "peak_rss": peak_rss(), "cpu_s": time.process_time() - t0}
    _write(Path(args.workdir) / f"after.rank{rank}.json", out)
    torch.distributed.barrier()


def phase_after(args) -> list[dict]:
    import torch.multiprocessing as mp

    from train.distributed import free_port

    mp.spawn(_after_rank, args=(args, free_port()), nprocs=args.pp)
    return [json.loads((Path(args.workdir) / f"after.rank{r}.json").read_text()) for r in range(args.pp)]


PHASES = {"export": phase_export, "before": phase_before, "after": phase_after}


# ------------------------------------------------------------------------------- driver


def _run_phase(name: str, args) -> dict | list:
    out = Path(args.workdir) / f"{name}.json"
    cmd = [sys.executable, __file__, "--phase", name, "--preset", args.preset, "--pp", str(args.pp),
           "--dtype", args.dtype, "--workdir", args.workdir]
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"phase {name} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="deepseek-ocr")
    ap.add_argument("--pp", type=int, default=4)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                    help="checkpoint dtype and training dtype of the per-stage build (deepspeed.dtype)")
    ap.add_argument("--workdir", default="/tmp/ocrflow-bench-stage2")
    ap.add_argument("--keep", action="store_true", help="keep the exported checkpoint")
    ap.add_argument("--phases", default="export,before,after",
                    help="phases to run; the others' results are read from --workdir (e.g. run 'before' "
                         "alone when enough memory is free, with --keep on the earlier run)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        _write(Path(args.workdir) / f"{args.phase}.json", PHASES[args.phase](args))
        return

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    wanted = args.phases.split(",")
    results = {}
    try:
        for name in PHASES:
            if name in wanted:
                results[name] = _run_phase(name, args)
    finally:
        if not args.keep:
            shutil.rmtree(Path(args.workdir) / "checkpoint", ignore_errors=True)
    for name in PHASES:
        if name not in results:
            if not (Path(args.workdir) / f"{name}.json").is_file():
                raise SystemExit(f"no results of phase {name} in {args.workdir} yet: run it (--phases {name})")
            results[name] = json.loads((Path(args.workdir) / f"{name}.json").read_text())
    export, before, after = results["export"], results["before"], results["after"]
    n = before["params"]
    print(f"\nstage-2 host memory, preset {args.preset}, PP={args.pp}, CPU/gloo; checkpoint {args.dtype} "
          f"{export['bytes'] / GB:.2f} GB (export: peak RSS {export['peak_rss'] / GB:.2f} GB, one stage at a time)")
    print(f"before: whole model fp32 per rank + load: peak RSS {before['peak_rss'] / GB:.2f} GB "
          f"(after imports {before['base_rss'] / GB:.2f} GB), {before['cpu_s']:.0f} CPU-s")
    print(f"\n{'rank':>4} {'stage':>5} {'params':>14} {'share':>6} {'stage ' + args.dtype:>11} "
          f"{'RSS imports':>11} {'peak before':>11} {'peak after':>10} {'CPU-s after':>11}")
    for r in sorted(after, key=lambda r: r["rank"]):
        print(f"{r['rank']:>4} {r['stage']:>5} {r['params']:>14,} {r['params'] / n:>6.1%} "
              f"{r['stage_bytes'] / GB:>9.2f}GB {r['base_rss'] / GB:>9.2f}GB {before['peak_rss'] / GB:>9.2f}GB "
              f"{r['peak_rss'] / GB:>8.2f}GB {r['cpu_s']:>11.1f}")
    total_after = sum(r["peak_rss"] for r in after)
    print(f"\nall {args.pp} ranks: before {args.pp * before['peak_rss'] / GB:.1f} GB "
          f"({args.pp} x {before['peak_rss'] / GB:.2f}), after {total_after / GB:.1f} GB")
    if args.json:
        _write(Path(args.json), {"preset": args.preset, "pp": args.pp, "dtype": args.dtype,
                                 "export": export, "before": before, "after": after})


if __name__ == "__main__":
    main()
