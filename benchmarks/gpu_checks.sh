#!/usr/bin/env bash
# Every GPU check of issue 9 in one run of about 8 minutes on one H100/H200 (16 CPU cores), output in
# $OUT/gpu_checks.txt (and bench.json / compare.* / eval.* beside it):
#
#   1. r2n2-bench at batch 8 and 256: bare loop vs Trainer.fit vs DataLoader, ratio b/a, with the
#      defaults (channels_last on the GPU, cudnn.benchmark on), with channels_last off, with compile
#   2. the training loop under torch.cuda.set_sync_debug_mode("error") (tests/test_gpu_path.py)
#   3. the quickstart (python train.py, 1 epoch) on the GPU, then r2n2-eval of its checkpoint (1..5
#      views, F-score): the eval time
#   4. experiment=paper for 1 epoch of its 20,000 samples at batch 8 with validation: samples/s and the
#      projected time of its 50 epochs
#   5. r2n2-compare --speed-only at batch 8 and 256, and r2n2-compare of seed_gru and r2n2_res_gru for
#      GPU_CHECKS_MINUTES each (default 1.5)
#
# Run from the repository root:   bash benchmarks/gpu_checks.sh
# The GPU machine has torch and lightning but not hydra-core/omegaconf/antlr4: unpack them (and pytest)
# beside the checkout first, here, and carry the ignored folder .gpu_pkgs along:
#   pip install --no-deps --target .gpu_pkgs hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 \
#       pytest iniconfig pluggy
# No ../shared there: the synthetic data set is generated on the machine (data goes to $WORK).
# GPU_CHECKS_TINY=1 shrinks every step so that the whole script runs end to end on a CPU (a rehearsal).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/gpu_checks}"
mkdir -p "$OUT"
REPORT="$OUT/gpu_checks.txt"
WORK="${GPU_CHECKS_WORK:-$(mktemp -d)}"
export PYTHONPATH="$PWD:$PWD/.gpu_pkgs${PYTHONPATH:+:$PYTHONPATH}"
export R2N2_DATA_DIR="$WORK/data"
PY="${PYTHON:-python}"
: > "$REPORT"

say() { echo "$*" | tee -a "$REPORT"; }
# step NAME COMMAND...: run it, its output into the report, its wall time and exit status after it
step() {
  local name="$1"; shift
  say ""; say "=== $name"; say "\$ $*"
  local start=$SECONDS
  "$@" 2>&1 | tail -n 60 | tee -a "$REPORT"
  local rc=${PIPESTATUS[0]}
  say "--- $name: exit $rc, $((SECONDS - start)) s"
}

if [ "${GPU_CHECKS_TINY:-0}" = 1 ]; then  # a CPU rehearsal: tiny data, few steps, short budgets
  # 5 views per object: r2n2-compare draws 1..5 views per batch
  DATA=(data.source.objects_per_category=4 data.source.views=5 "data.source.categories=[chair,table,airplane]")
  BATCHES=(2 4); BENCH=(--warmup 1 --steps 2); MINUTES=0.1; PAPER_SPLITS="{train:12,val:6,test:6}"
  EVAL=(views=[1,2] fscore.points=256 recognition=false)
else
  DATA=(); BATCHES=(8 256); BENCH=(--warmup 5 --steps 20); MINUTES="${GPU_CHECKS_MINUTES:-1.5}"
  PAPER_SPLITS="{train:20000,val:4000,test:1000}"; EVAL=()
fi
COMMON=(paths.data_dir="$R2N2_DATA_DIR" "${DATA[@]}")

say "gpu_checks $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
step "environment" "$PY" -c "
import torch, lightning, hydra, omegaconf
print('torch', torch.__version__, '| lightning', lightning.__version__, '| hydra', hydra.__version__)
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-',
      '| bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())
from r2n2.machine import describe_machine; print('machine:', describe_machine())
from r2n2.accelerator import choose; print('auto choice:', choose())"
command -v nvidia-smi >/dev/null && step "nvidia-smi" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

# 1. bench (generates and caches the default synthetic data on first use)
step "bench: defaults (channels_last auto = on a GPU, cudnn.benchmark on)" \
  "$PY" -m r2n2.cli.bench --batch-sizes "${BATCHES[@]}" "${BENCH[@]}" --out "$OUT/bench_default" "${COMMON[@]}"
step "bench: channels_last off" \
  "$PY" -m r2n2.cli.bench --batch-sizes "${BATCHES[@]}" "${BENCH[@]}" --out "$OUT/bench_nchw" "${COMMON[@]}" \
  module.channels_last=false
step "bench: torch.compile" \
  "$PY" -m r2n2.cli.bench --batch-sizes "${BATCHES[@]}" "${BENCH[@]}" --out "$OUT/bench_compile" "${COMMON[@]}" \
  module.compile=true

# 2. no host-device sync per training step (skips itself without CUDA)
step "sync debug mode (tests/test_gpu_path.py)" \
  "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_path.py -k "sync or chose" -rs

# 3. the quickstart on the GPU (1 epoch) and r2n2-eval of its best checkpoint
RUN="$WORK/quickstart"
step "quickstart, 1 epoch" "$PY" train.py "${COMMON[@]}" trainer.max_epochs=1 logger=none \
  trainer.enable_progress_bar=false hydra.run.dir="$RUN"
[ -f "$RUN/metrics.json" ] && say "quickstart metrics: $(tr -d '\n ' < "$RUN/metrics.json")"
step "r2n2-eval of the quickstart checkpoint (1..5 views, F-score)" "$PY" -m r2n2.cli.eval \
  ckpt="$RUN/checkpoints/best.ckpt" "${EVAL[@]}" progress=false hydra.run.dir="$OUT/eval"

# 4. experiment=paper: one epoch of its 20,000 samples at batch 8, validation included
PAPER="$WORK/paper"
step "experiment=paper, 1 epoch" "$PY" train.py experiment=paper "${COMMON[@]}" "data.splits=$PAPER_SPLITS" \
  trainer.max_epochs=1 logger=none test=false trainer.enable_progress_bar=false hydra.run.dir="$PAPER"
[ -f "$PAPER/metrics.json" ] && "$PY" - "$PAPER/metrics.json" <<'EOF' | tee -a "$REPORT"
import json, sys
m = json.load(open(sys.argv[1]))
fit = m["fit_seconds"]
print(f"experiment=paper: 1 epoch (train + validation) in {fit:.1f} s, {m['train_samples_per_second']:.0f} "
      f"training samples/s; 50 epochs would take about {50 * fit / 60:.1f} min (target <= 15)")
EOF

# 5. the report's question on the GPU: speed at 8 and 256, and accuracy after equal training time
step "r2n2-compare --speed-only" "$PY" -m r2n2.cli.compare --speed-only --models seed_gru r2n2_res_gru \
  --speed-batches "${BATCHES[@]}" --out "$OUT/compare_speed" "${COMMON[@]}"
step "r2n2-compare, $MINUTES min per model" "$PY" -m r2n2.cli.compare --models seed_gru r2n2_res_gru \
  --minutes "$MINUTES" --out "$OUT/compare" "${COMMON[@]}"

say ""; say "=== summary"
for f in "$OUT"/bench_*/bench.json; do
  "$PY" - "$f" <<'EOF' | tee -a "$REPORT"
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    print(f"{sys.argv[1].split('/')[-2]:>14} batch {r['batch']:>4}: bare {r['bare_loop']:>9,.0f}  fit {r['trainer_fit']:>9,.0f}"
          f"  loader {r['dataloader']:>9,.0f} samples/s  b/a {r['ratio']:.2f}  ({r['precision']}, {d['machine']})")
EOF
done
say "done in $SECONDS s"
