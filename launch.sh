#!/usr/bin/env bash
# ocrflow: the one entry point.   ./launch.sh help
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${OCRFLOW_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

usage() {
  cat <<'EOF'
Usage: ./launch.sh <command|recipe> [hydra overrides...]

Commands
  demo [overrides]     The embedded default, end to end on this machine (CPU, tiny model, a few
                       minutes on 2 cores): synthetic PDFs -> data engine -> BPE tokenizer ->
                       stage 1 -> stage 2 (pipeline parallel over CPU processes) -> export ->
                       evaluation on held-out pages. Output: runs/demo (DEMO_DIR=... to change).
                       Real text instead of pseudo-text: DEMO_CORPUS=/path/to/udhr ./launch.sh demo
  flywheel [overrides] Model-flywheel rounds for minority languages on the embedded default
                       (synthetic Latin + Devanagari line pages; CPU): fitz patches -> recognizer
                       -> detector-cut patches labelled, accepted, reassembled; per-round report
                       with CER plot. Output: runs/flywheel (out=... to change). docs/flywheel.md
  test [pytest args]   Create .venv if missing, install ocrflow[test], run pytest
                       (default: -m "not slow"; pass e.g. `-m slow` or a test path instead).
  help                 This text.

Recipes (conf/experiment/<recipe>.yaml; any Hydra override may follow)
  smoke                Stage 1, tiny model, CPU/gloo, few steps (after `demo`: reuses runs/demo data)
  smoke_stage2         Stage 2, tiny model, PP=2 over 2 CPU processes
  paper_stage1         Paper stage 1: DeepEncoder + OPT-125M-size LM, lr 5e-5 cosine, seq 4096,
                       global batch 1280, ZeRO-2
  paper_stage2         Paper stage 2: DeepSeek-OCR, PP=4 x DP, ZeRO-1, lr 3e-5 step, seq 8192,
                       global batch 640
  paper_gundam_m       Continue a trained model in Gundam-M mode (needs model.init_from=...)
  flywheel_recognizer  The flywheel's line-patch recognizer (tiny, stage 2, one process); `flywheel`
                       runs it per round with data.shards / model.tokenizer / train.out_dir set

  Examples
    ./launch.sh paper_stage1 model.tokenizer=/ckpt/deepseek-ocr data.shards='[/data/shards/*.tar]'
    HOSTFILE=/etc/hosts.ds ./launch.sh paper_stage2 model.tokenizer=... model.encoder_from=...
    ./launch.sh smoke train.steps=100 logging.wandb.mode=disabled

Process layout
  Single node: one process per GPU (deepspeed launcher); on CPU one process per pipeline stage
  (torchrun, gloo). train.nproc_per_node=N overrides. World = pp x dp; dp = world / pp.
  Multi node: HOSTFILE=<DeepSpeed hostfile> ("host slots=8" per line); MASTER_ADDR/MASTER_PORT
  and DS_LAUNCHER (pdsh|openmpi|slurm|...) are passed to the deepspeed launcher.
  wandb runs offline by default (WANDB_MODE=online to upload live).

Environment: OCRFLOW_VENV (default ./.venv), PYTHON (interpreter used to create it).
EOF
}

# ---------------------------------------------------------------------------------- env
ensure_env() {
  # Use the active env if ocrflow imports there; else create/reuse .venv. Never installs a
  # CUDA torch by itself: install the torch build for your machine first if you need one.
  if [[ -n "${VIRTUAL_ENV:-}" ]] && python -c "import train, models, data_engine" 2>/dev/null; then
    return
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[launch] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
  if ! python -c "import hydra, deepspeed, webdataset, train.api" 2>/dev/null \
     || ! python -m pip show ocrflow >/dev/null 2>&1; then
    echo "[launch] installing ocrflow[test] into $VENV"
    python -m pip install -q -e ".[test]"
  fi
}

cpu_threads() {  # threads per process so N processes share the cores
  local n="$1" cores
  cores="$(python -c 'import os; print(len(os.sched_getaffinity(0)))' 2>/dev/null || nproc)"
  echo $(( cores / n > 0 ? cores / n : 1 ))
}

have_fonts() {  # the Noto Sans file the synthetic pages need (OCRFLOW_FONT_DIRS or Debian's folders)
  python -c "import sys; from data_engine.scripts import find_font; sys.exit(find_font('NotoSans-Regular.ttf') is None)"
}

fonts_for_tests() {  # install the Noto fonts when we may (root or passwordless sudo); else the
  # tests that need them skip with the reason
  have_fonts && return 0
  if [[ "$(id -u)" -eq 0 ]] || sudo -n true 2>/dev/null; then
    echo "[launch] Noto fonts not found: installing them with scripts/setup_fonts.sh"
    bash scripts/setup_fonts.sh || echo "[launch] font install failed: font-dependent tests will skip"
  else
    echo "[launch] Noto fonts not found (no root to install them): font-dependent tests will skip;" \
         "run scripts/setup_fonts.sh or set OCRFLOW_FONT_DIRS"
  fi
}

# ------------------------------------------------------------------------------ training
run_train() {  # run_train <experiment> [overrides...]
  local exp="$1"; shift
  local plan nproc pp backend stage out
  plan="$(python -m train.api plan "experiment=$exp" "$@" 2>/dev/null | tail -n 1)" || {
    python -m train.api plan "experiment=$exp" "$@"; exit 1; }
  read -r nproc pp backend stage out <<<"$plan"
  echo "[launch] experiment=$exp stage=$stage pp=$pp processes/node=$nproc backend=$backend out=$out"
  local args=(-m train.cli "experiment=$exp" "$@")
  if [[ -n "${HOSTFILE:-}" ]]; then
    [[ -f "$HOSTFILE" ]] || { echo "HOSTFILE=$HOSTFILE not found" >&2; exit 2; }
    # Each node runs the same command from this directory; DeepSpeed's launcher exports the
    # variables listed in ./.deepspeed_env (or ~/.deepspeed_env) to every node.
    deepspeed --hostfile "$HOSTFILE" --launcher "${DS_LAUNCHER:-pdsh}" \
      ${MASTER_ADDR:+--master_addr "$MASTER_ADDR"} --master_port "${MASTER_PORT:-29500}" \
      --no_local_rank --module train.cli "experiment=$exp" "$@"
  elif [[ "$backend" == "nccl" ]]; then
    deepspeed --num_gpus "$nproc" --master_port "${MASTER_PORT:-29500}" \
      --no_local_rank --module train.cli "experiment=$exp" "$@"
  elif (( nproc == 1 )); then
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(cpu_threads 1)}" python "${args[@]}"
  else
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(cpu_threads "$nproc")}" \
      torchrun --standalone --nproc_per_node "$nproc" "${args[@]}"
  fi
}

# ---------------------------------------------------------------------------------- demo
run_demo() {
  local dir="${DEMO_DIR:-runs/demo}" t0=$SECONDS
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local corpus_args=(--languages "${DEMO_LANGS:-Latn}")
  if [[ -n "${DEMO_CORPUS:-}" ]]; then corpus_args=(--corpus "$DEMO_CORPUS" --languages "${DEMO_LANGS:-eng}"); fi
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(cpu_threads 1)}"

  if ! have_fonts; then
    echo "[demo] Noto Sans not found: installing the Noto fonts with scripts/setup_fonts.sh (or set OCRFLOW_FONT_DIRS)"
    bash scripts/setup_fonts.sh
  fi
  echo "[demo 1/7] synthetic PDFs -> $dir/pdfs (train) and $dir/pdfs_heldout"
  python -m data_engine.synthetic --out "$dir/pdfs" "${corpus_args[@]}" --docs "${DEMO_DOCS:-6}" --pages 2 --seed 0
  python -m data_engine.synthetic --out "$dir/pdfs_heldout" "${corpus_args[@]}" --docs 2 --pages 2 --seed 1

  echo "[demo 2/7] data engine -> $dir/engine/shards, $dir/heldout/shards"
  # coarse + fine (layout boxes + text) labels: the trainers draw a label kind per page
  python -m data_engine.cli "input=$dir/pdfs" "out=$dir/engine" data_engine.progress=false data_engine.dpi=72 \
    "data_engine.labels=[coarse,fine]"
  python -m data_engine.cli "input=$dir/pdfs_heldout" "out=$dir/heldout" data_engine.progress=false data_engine.dpi=72

  echo "[demo 3/7] BPE tokenizer -> $dir/tokenizer"
  python -m data_engine.tokenizer_train --shards "$dir/engine/shards/*.tar" --out "$dir/tokenizer" \
    --vocab-size "${DEMO_VOCAB:-1024}"

  # OCR pages plus their label text as the text-only source (the paper mixes in 10% text-only)
  local common=("model.tokenizer=$dir/tokenizer" "data.shards=[$dir/engine/shards/*.tar]"
                "data.text_shards=[$dir/engine/shards/*.tar]")
  # vision reliance on the held-out pages: held-out loss with real vs blank images
  common+=("train.reliance.shards=[$dir/heldout/shards/*.tar]" "train.reliance.every=${DEMO_RELIANCE_EVERY:-10}")
  echo "[demo 4/7] stage 1 (DeepEncoder + tiny OPT, ZeRO-1, gloo) -> $dir/stage1"
  run_train smoke "${common[@]}" "train.out_dir=$dir/stage1" "train.steps=${DEMO_STAGE1_STEPS:-30}" "$@"

  echo "[demo 5/7] stage 2 (tiny DeepSeek-OCR, PP=2 over 2 CPU processes, ZeRO-1, gloo) -> $dir/stage2"
  run_train smoke_stage2 "${common[@]}" "train.out_dir=$dir/stage2" \
    "model.encoder_from=$dir/stage1/encoder.safetensors" "train.steps=${DEMO_STAGE2_STEPS:-30}" "$@"

  python -m train.plots "$dir/stage1/metrics.jsonl" "$dir/stage2/metrics.jsonl" --out "$dir/loss_curve.png" \
    >/dev/null && echo "[demo] loss curves (train, held-out real vs blank images): $dir/loss_curve.png"

  echo "[demo 6/7] export (stage 2 writes the final model in the published layout)"
  local export="$dir/stage2/model"
  [[ -f "$export/config.json" ]] || { echo "[demo] no exported model at $export" >&2; exit 1; }

  echo "[demo 7/7] evaluation on held-out pages"
  python -m train.evaluate --model "$export" --tokenizer "$dir/tokenizer" \
    --shards "$dir/heldout/shards/*.tar" --pages "${DEMO_EVAL_PAGES:-4}" --mode tiny \
    --max-new-tokens "${DEMO_EVAL_TOKENS:-96}" --out "$dir/eval.json"

  cat <<EOF

[demo] done in $(( SECONDS - t0 ))s
  run (stage 1 / stage 2, metrics.jsonl, wandb offline): $dir/stage1  $dir/stage2
  checkpoint (published layout + config.json):           $export
  evaluation report:                                     $dir/eval.json
  data: $dir/engine/shards (report.json), tokenizer: $dir/tokenizer
EOF
}

# ---------------------------------------------------------------------------------- main
cmd="${1:-help}"
shift || true
case "$cmd" in
  help|-h|--help) usage ;;
  test)
    ensure_env
    fonts_for_tests
    if (( $# == 0 )); then set -- -m "not slow" -q; fi
    exec python -m pytest "$@" ;;
  demo)
    ensure_env
    run_demo "$@" ;;
  flywheel)
    ensure_env
    scripts/setup_fonts.sh >/dev/null || echo "[flywheel] Noto fonts missing: see scripts/setup_fonts.sh" >&2
    scripts/setup_tesseract.sh eng hin >/dev/null \
      || echo "[flywheel] Tesseract not installed: the baseline column will say why" >&2
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(cpu_threads 1)}" exec python -m train.flywheel "$@" ;;
  *)
    if [[ ! -f "conf/experiment/$cmd.yaml" ]]; then
      echo "unknown command or recipe '$cmd'" >&2
      echo "recipes: $(cd conf/experiment && ls ./*.yaml | sed 's|./||; s|\.yaml||' | tr '\n' ' ')" >&2
      exit 2
    fi
    ensure_env
    run_train "$cmd" "$@" ;;
esac
