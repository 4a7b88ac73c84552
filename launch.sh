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
                       2 cores, ~15 min): synthetic document PDFs -> data engine -> shards + the
                       other sources (in the background); reading pages (random capitals and
                       digits, 35 faces) -> engine -> stage 1 from scratch, the reading ladder's
                       A1 -> A2 -> stage 2 (pipeline parallel over CPU processes) from their
                       encoder -> export -> per model, CER on pages in unseen font designs beside
                       before training, blank pages, wrong-page reference, constant output, the
                       verdict. Output: runs/demo (DEMO_DIR=...); DEMO_A1_STEPS, DEMO_A2_STEPS,
                       DEMO_STAGE2_STEPS, DEMO_TRAIN_PAGES, DEMO_HELDOUT_PAGES change its size.
                       Real text instead of pseudo-text: DEMO_CORPUS=/path/to/udhr ./launch.sh demo
  flywheel [overrides] Model-flywheel rounds for minority languages on the embedded default
                       (synthetic Latin + Devanagari line pages; CPU): fitz patches -> recognizer
                       -> detector-cut patches labelled, accepted, reassembled; per-round report
                       with CER plot. Output: runs/flywheel (out=... to change). docs/flywheel.md
  test [pytest args]   Create .venv if missing, install ocrflow[test], run pytest
                       (default: -m "not slow"; pass e.g. `-m slow` or a test path instead).
                       Says first which tests will skip (no real PDFs, no ../shared) and how to
                       get what they need.
  env                  What launch.sh installs on this machine (the torch build: a CPU wheel
                       without a GPU, the user's CUDA build kept), without installing anything.
  help                 This text. `<command|recipe> --help` installs nothing.

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
  ocr2_stage1          DeepSeek-OCR 2 stage 1: DeepEncoder V2 pretraining (docs/ocr2.md); `model=tiny_ocr2`
                       on CPU. ocr2_stage2: joint training with the MoE decoder (PP=4; PP=2 on CPU);
                       ocr2_stage3: encoder frozen
  ocr2_reading         DeepSeek-OCR 2 (tiny-ocr2-reader) on the reading ladder's pages, ocr2_nano view
                       (rungs ocr2-A1, ocr2-A2: python -m train.ladder)

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

Environment: OCRFLOW_VENV (default ./.venv), PYTHON (interpreter used to create it),
  OCRFLOW_TORCH_WHEEL (a local torch wheel to install), OCRFLOW_ACCEL=cpu|cuda (skips the detection).
EOF
}

commands_line() {  # every command and recipe, for the unknown-command error
  echo "commands: demo flywheel test env help; recipes: $(cd conf/experiment && ls ./*.yaml | sed 's|./||; s|\.yaml||' | tr '\n' ' ')"
}

# ---------------------------------------------------------------------------------- env
# Installed? Asked of the installed metadata (find_spec, version), not by importing: importing
# deepspeed and torch costs seconds, paid again by the command itself. Every requirement of
# pyproject.toml (dependencies, test and sources extras) must be installed at a version it allows,
# so a venv made before a requirement was added or re-pinned is brought up to date.
HAVE_PKGS='import importlib.util as u, importlib.metadata as m, sys
if any(u.find_spec(p) is None for p in ("hydra", "deepspeed", "webdataset", "torch", "train")) or not m.version("ocrflow"):
    sys.exit(1)
try:
    import tomllib  # Python 3.11+; on 3.10 the presence checks above are all
except ImportError:
    sys.exit(0)
from packaging.requirements import Requirement
proj = tomllib.load(open("pyproject.toml", "rb"))["project"]
for line in proj["dependencies"] + proj["optional-dependencies"]["test"] + proj["optional-dependencies"]["sources"]:
    r = Requirement(line)
    if r.name == "ocrflow" or (r.marker and not r.marker.evaluate({"extra": ""})):
        continue
    try:
        ok = r.specifier.contains(m.version(r.name), prereleases=True)
    except m.PackageNotFoundError:
        ok = False
    if not ok:
        sys.exit(f"{r} is not installed")'

accelerator() {  # cuda | cpu (OCRFLOW_ACCEL skips the detection)
  if [[ -n "${OCRFLOW_ACCEL:-}" ]]; then echo "$OCRFLOW_ACCEL"; return; fi
  if { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } \
     || compgen -G "/proc/driver/nvidia/gpus/*" >/dev/null; then echo cuda; else echo cpu; fi
}

local_cpu_wheel() {  # <python>: OCRFLOW_TORCH_WHEEL, else the newest torch CPU wheel in pip's find-links
  if [[ -n "${OCRFLOW_TORCH_WHEEL:-}" ]]; then echo "$OCRFLOW_TORCH_WHEEL"; return; fi
  local dirs dir
  dirs="${PIP_FIND_LINKS:-$("$1" -m pip config get global.find-links 2>/dev/null || true)}"
  for dir in $dirs; do
    dir="${dir#file://}"
    if compgen -G "$dir/torch-*+cpu*.whl" >/dev/null; then
      find "$dir" -maxdepth 1 -name 'torch-*+cpu*.whl' | sort -V | tail -n 1; return
    fi
  done
}

CPU_INDEX="https://download.pytorch.org/whl/cpu"

torch_plan() {  # <python>: one line "<keep|install|stop>|<what, in words>|<pip arguments>"; installs nothing
  local py="$1" ver wheel
  if ver="$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null)"; then
    echo "keep|torch $ver is installed (kept as it is)|"; return
  fi
  if [[ "$(accelerator)" == cuda ]]; then
    echo "install|torch with CUDA from the package registry (a GPU is present; about 2.5 GB to download, 6-7 GB installed)|torch"
    return
  fi
  wheel="$(local_cpu_wheel "$py")"
  if [[ -n "$wheel" && -f "$wheel" ]]; then
    echo "install|torch CPU build from the local wheel $wheel ($(( $(stat -c %s "$wheel") / 1048576 )) MB)|$wheel"
  elif "$py" -c "import urllib.request as r; r.urlopen('$CPU_INDEX/torch/', timeout=5)" 2>/dev/null; then
    echo "install|torch CPU build from $CPU_INDEX (about 200 MB to download, 0.9 GB installed)|torch --index-url $CPU_INDEX"
  else
    echo "stop|no GPU here, and neither a local CPU wheel (OCRFLOW_TORCH_WHEEL, pip find-links) nor $CPU_INDEX is reachable: install a CPU torch build into $VENV first (the registry's default build brings 4 GB of CUDA libraries)|"
  fi
}

ensure_torch() {  # a CPU machine gets a CPU build; a GPU machine keeps the user's CUDA build
  local action what args
  IFS='|' read -r action what args <<<"$(torch_plan python)"
  case "$action" in
    keep) ;;
    stop) echo "[launch] $what" >&2; exit 2 ;;
    install)
      echo "[launch] installing $what"
      # shellcheck disable=SC2086
      python -m pip install --progress-bar on $args ;;
  esac
}

ensure_env() {
  # Use the active env if ocrflow is installed there; else create/reuse .venv. A machine
  # without a GPU gets a CPU torch build (ensure_torch), never the registry's CUDA one.
  if [[ -n "${VIRTUAL_ENV:-}" ]] && python -c "$HAVE_PKGS" 2>/dev/null; then
    return
  fi
  if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[launch] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
  if ! python -c "$HAVE_PKGS" 2>/dev/null; then
    ensure_torch
    echo "[launch] installing ocrflow[test] into $VENV"
    python -m pip install -e ".[test]"
  fi
}

cpu_threads() {  # threads per process so N processes share the cores; 1 on a machine already
  # oversubscribed, where a second thread only spins (train/pace.py, docs/training.md "Threads")
  python -m train.pace "$1" 2>/dev/null || echo 1
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
  # The one config check (keys, shards, tokenizer, output folder), before anything heavy: a
  # mistake is one line (train/preflight.py); on success it prints the process layout.
  plan="$(python -m train.preflight "$exp" "$@")" || exit 2
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
  # one thread per process (the user's choice, if any), set before part A starts in the background:
  # part A and the next rung's pages run beside each training, and stage 2 runs its 2 pipeline
  # processes; two threads per process spin on 2 busy cores (docs/training.md "Threads")
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

  if ! have_fonts; then
    echo "[demo] Noto Sans or Liberation not found: installing them with scripts/setup_fonts.sh (or set OCRFLOW_FONT_DIRS)"
    bash scripts/setup_fonts.sh
  fi
  # Part A: the data engine on documents (multilingual synthetic PDFs: coarse + fine labels) and
  # the paper's other sources; the shards feed `./launch.sh smoke` / `smoke_stage2` and your runs.
  # It runs beside part B's first training (one process: the second core is free), logged to
  # $dir/documents.log and awaited before stage 2.
  echo "[demo 1/8] in the background (log: $dir/documents.log): synthetic document PDFs -> $dir/pdfs," \
       "data engine (coarse + fine labels) -> $dir/engine/shards, data sources -> $dir/sources, their tokenizer"
  demo_documents "$dir" "${corpus_args[@]}" >"$dir/documents.log" 2>&1 &
  local documents_pid=$!

  # Part B: a model that reads letters it was never drawn on, in a CPU budget: the first two steps
  # of the reading ladder's curriculum (train/ladder.py, docs/training.md) in stage 1, then stage 2
  # from their encoder. Pages: random capitals and digits in 35 faces of 8 font families; every
  # table scores held-out pages in 3 font designs never trained.
  local lad="$dir/reading"
  # the unseen-font split only (its table has every control); the trained-font and size splits cost
  # an engine run and a reading each per rung: python -m train.ladder --rung ... scores them
  local pages=(--train-pages "${DEMO_TRAIN_PAGES:-2000}" --heldout-pages "${DEMO_HELDOUT_PAGES:-60}" --splits heldout_fonts)
  mkdir -p "$lad"
  echo "[demo 2/8] reading pages of rung A1 (PDF -> engine -> shards + tokenizer) -> $lad"
  python -m train.ladder --rung A1 --out "$lad/rung_A1" "${pages[@]}" --data-only >"$lad/pages_A1.log" 2>&1 \
    || { tail -n 30 "$lad/pages_A1.log" >&2; exit 1; }
  echo "[demo 3/8] stage 1 from scratch, rung A1: 2 x 2 letters, one per vision token of the nano view" \
       "(moved up to 20 px) -> $lad/rung_A1"
  # the next rung's pages are made meanwhile, on the core this training leaves free
  python -m train.ladder --rung A2 --out "$lad/rung_A2" "${pages[@]}" --data-only >"$lad/pages_A2.log" 2>&1 &
  local pages_pid=$!
  python -m train.ladder --rung A1 --out "$lad/rung_A1" "${pages[@]}" --steps "${DEMO_A1_STEPS:-1300}" "$@"
  wait "$pages_pid" || { tail -n 30 "$lad/pages_A2.log" >&2; exit 1; }
  echo "[demo 4/8] stage 1, rung A2 (continues A1): 2-4 letters in any cells -> $lad/rung_A2"
  python -m train.ladder --rung A2 --out "$lad/rung_A2" "${pages[@]}" --steps "${DEMO_A2_STEPS:-1000}" \
    --from-run "$lad/rung_A1/run" "$@"
  python -m train.plots "$lad/rung_A1/run/metrics.jsonl" "$lad/rung_A2/run/metrics.jsonl" \
    --out "$dir/loss_curve_stage1.png" >/dev/null \
    && echo "[demo] stage-1 loss curves (train, held-out real vs blank images): $dir/loss_curve_stage1.png"

  wait "$documents_pid" || { echo "[demo] the document part failed:" >&2; tail -n 30 "$dir/documents.log" >&2; exit 1; }
  echo "[demo 5/8] the document part (background) is done: shards $dir/engine/shards, sources $dir/sources," \
       "tokenizer $dir/tokenizer"
  echo "[demo 6/8] stage 2 from A2's encoder (tiny DeepSeek-OCR, MoE decoder, PP=2 over 2 CPU processes," \
       "A2's pages) -> $lad/rung_C-grid"
  python -m train.ladder --rung C-grid --out "$lad/rung_C-grid" "${pages[@]}" \
    --steps "${DEMO_STAGE2_STEPS:-700}" --from-run "$lad/rung_A2/run" "$@"
  python -m train.plots "$lad/rung_A2/run/metrics.jsonl" "$lad/rung_C-grid/run/metrics.jsonl" \
    --out "$dir/loss_curve.png" >/dev/null \
    && echo "[demo] loss curves (train, held-out real vs blank images): $dir/loss_curve.png"

  local export="$lad/rung_C-grid/run/model"
  echo "[demo 7/8] export (stage 2 writes the final model in the published layout) -> $export"
  [[ -f "$export/config.json" ]] || { echo "[demo] no exported model at $export" >&2; exit 1; }
  echo "[demo 8/8] reading on held-out pages in unseen font designs (tables above; result.json per rung)"
  python -m train.ladder --summary "$lad/rung_A1" "$lad/rung_A2" "$lad/rung_C-grid"

  cat <<EOF

[demo] done in $(( SECONDS - t0 ))s
  reading runs (stage 1 A1, A2; stage 2; metrics.jsonl, wandb offline): $lad/rung_{A1,A2,C-grid}/run
  checkpoint (published layout + config.json):                         $export
  reading tables (result.json, the tables printed above):              $lad/rung_{A1,A2,C-grid}/result.json
  document shards (coarse + fine, report.json): $dir/engine/shards; sources: $dir/sources;
  their tokenizer: $dir/tokenizer (./launch.sh smoke trains on them)
EOF
}

# the demo's part A: documents -> data engine -> shards, the other sources, their tokenizer
demo_documents() {
  local dir="$1"; shift
  python -m data_engine.synthetic --out "$dir/pdfs" "$@" --docs "${DEMO_DOCS:-6}" --pages 2 --seed 0
  python -m data_engine.cli "input=$dir/pdfs" "out=$dir/engine" data_engine.progress=false data_engine.dpi=72 \
    "data_engine.labels=[coarse,fine]"
  # OCR 2.0 (charts, chemistry, geometry), formulas, tables, scene text and grounding (general
  # vision, from the engine's layout boxes): the rest of the paper's mix (docs/sources.md)
  python -m data_engine.sources.embedded --out "$dir/sources" --count "${DEMO_SOURCE_COUNT:-24}" \
    --scene-count "${DEMO_SCENE_COUNT:-8}" --engine-shards "$dir/engine/shards/*.tar" >/dev/null
  python -m data_engine.tokenizer_train --shards "$dir/engine/shards/*.tar" --shards "$dir/sources/*/shards/*.tar" \
    --out "$dir/tokenizer" --vocab-size "${DEMO_VOCAB:-1024}"
}

# ---------------------------------------------------------------------------------- help
wants_help() {
  local a
  for a in "$@"; do [[ "$a" == --help || "$a" == -h || "$a" == --hydra-help ]] && return 0; done
  return 1
}

help_without_setup() {  # <module> [args]: the module's own help from an installed env; installs nothing
  local py="$VENV/bin/python"
  [[ -n "${VIRTUAL_ENV:-}" ]] && py=python
  if { [[ "$py" == python ]] || [[ -x "$py" ]]; } && "$py" -c "$HAVE_PKGS" 2>/dev/null; then
    exec "$py" -m "$@"
  fi
  usage
  echo "(no environment installed yet: ./launch.sh test, or any command, installs it)"
  exit 0
}

say_test_skips() {  # what the default test run cannot cover here, and how to get it
  local shared="${OCRFLOW_SHARED:-$ROOT/../shared}" n
  if ! compgen -G ".cache/real_pdfs/*.pdf" >/dev/null || ! command -v pdftotext >/dev/null; then
    n="$(grep -c '^def test_' tests/test_real_pdfs.py || true)"
    echo "[launch] the $n tests of tests/test_real_pdfs.py will skip: no real PDFs in .cache/real_pdfs" \
         "or no pdftotext; get both with: bash scripts/fetch_real_pdfs.sh (as .ci/run does)"
  fi
  if [[ ! -d "$shared" ]]; then
    n="$(grep -lE 'shared_dir|manifest|udhr_dir' tests/test_*.py | wc -l)"
    echo "[launch] tests in $n files that read the reference folder will skip: $shared not found" \
         "(checkpoint manifest, UDHR texts); set OCRFLOW_SHARED=/path/to/shared where you have it"
  fi
}

# ---------------------------------------------------------------------------------- main
cmd="${1:-help}"
shift || true
case "$cmd" in
  help|-h|--help) usage ;;
  test)
    ensure_env
    fonts_for_tests
    say_test_skips
    if (( $# == 0 )); then set -- -m "not slow" -q; fi
    exec python -m pytest "$@" ;;
  env)
    py="$VENV/bin/python"; [[ -x "$py" ]] || py="$PY"
    echo "accelerator: $(accelerator); venv: $VENV$([[ -x "$VENV/bin/python" ]] || echo ' (not created yet)')"
    IFS='|' read -r action what _ <<<"$(torch_plan "$py")"
    echo "torch: $action: $what" ;;
  demo)
    if wants_help "$@"; then usage; exit 0; fi
    ensure_env
    run_demo "$@" ;;
  flywheel)
    if wants_help "$@"; then help_without_setup train.flywheel "$@"; fi
    ensure_env
    scripts/setup_fonts.sh >/dev/null || echo "[flywheel] Noto fonts missing: see scripts/setup_fonts.sh" >&2
    scripts/setup_tesseract.sh eng hin >/dev/null \
      || echo "[flywheel] Tesseract not installed: the baseline column will say why" >&2
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(cpu_threads 1)}" exec python -m train.flywheel "$@" ;;
  *)
    if [[ ! -f "conf/experiment/$cmd.yaml" ]]; then
      echo "unknown command or recipe '$cmd'; $(commands_line)(./launch.sh help)" >&2
      exit 2
    fi
    if wants_help "$@"; then help_without_setup train.cli "experiment=$cmd" "$@"; fi
    ensure_env
    run_train "$cmd" "$@" ;;
esac
