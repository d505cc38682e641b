#!/usr/bin/env bash
# Every GPU check of issues 23, 12 and 9 in one run on one H100/H200 (16 CPU cores), output in
# $OUT/gpu_checks.txt (and bench_*/bench.json, eval/, compare*/ beside it). Steps, in priority order
# (issue 23, the open one, first; the first step that needs the synthetic data generates it):
#
#   bench    r2n2-bench at batch 8 and 256 with the defaults (data on the device, channels_last auto =
#            on, cudnn.benchmark on): bare loop vs Trainer.fit vs the input alone, b/a, ms per step
#   graphs   module.cuda_graph=true (the whole step as CUDA graphs) at 8 and 256; module.compile=true
#            at 256 (issue 23, item 4: b/a >= 0.9 for the fastest mode at each size)
#   gputests tests/test_gpu_path.py: no host-device sync per step; the captured step equals the eager
#            one; a cuda_graph run trains as Lightning's automatic optimisation
#   probe    r2n2-bench --probe at batch 8, 3 alternating rounds: the loop's own cost per step
#   paper    experiment=paper for 1 epoch of its 20,000 samples at batch 8 with validation, with
#            module.cuda_graph=true: the projected time of its 50 epochs (1M samples; target <= 10 min)
#   budget   issue 12's 2-minute budget: python train.py at batch 64, trainer.max_time=2 min (test IoU
#            against both mean shapes and the recognition baselines, from its metrics.json)
#   eval     r2n2-eval of that checkpoint: the whole test split at 1..5 views with F-score (the time)
#   levers   the 2-minute budget again, once per lever (issue 12, item 3): 1..5 views per batch (14
#            epochs: each sample costs ~3 views), dropout 0.8; GPU_CHECKS_LEVERS="a b;c" runs other
#            override sets (";" between runs), e.g. "data.source.views=24 trainer.max_epochs=10" (4x the
#            rendering). Each run's line: test IoU and its own baselines (other data, other test split)
#   loader   r2n2-bench at 8 and 256 on the DataLoader path (data.device_data=false), for comparison
#   compile  r2n2-bench with torch.compile's CUDA graphs (module.compile=reduce-overhead) at 8
#   speed    r2n2-compare --speed-only at batch 8 and 256 (seed_gru vs r2n2_res_gru)
#   compare  r2n2-compare of seed_gru and r2n2_res_gru for GPU_CHECKS_MINUTES each (default 1)
#   nchw     r2n2-bench at 8 and 256 with channels_last off
#
#   bash benchmarks/gpu_checks.sh [STEP ...]      (no step: all of them, in the order above)
#
# GPU_CHECKS_DEADLINE=S skips a step that would not end S seconds after the script started (each step
# has a rough cost estimate), so a device run that has a fixed time still returns the most important
# figures. Data and runs go to GPU_CHECKS_WORK (default outputs/gpu_work: kept between calls on a
# machine that stays warm, so a second call reuses the generated data).
# The GPU machine has torch and lightning but not hydra-core/omegaconf/antlr4: unpack them (and pytest)
# beside the checkout first, here, and carry the ignored folder .gpu_pkgs along:
#   pip install --no-deps --target .gpu_pkgs hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 \
#       pytest iniconfig pluggy
# No ../shared there: the synthetic data set is generated on the machine.
# GPU_CHECKS_TINY=1 shrinks every step so that the whole script runs end to end on a CPU (a rehearsal).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-outputs/gpu_checks}"
mkdir -p "$OUT"
REPORT="$OUT/gpu_checks.txt"
WORK="${GPU_CHECKS_WORK:-outputs/gpu_work}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
export PYTHONPATH="$PWD:$PWD/.gpu_pkgs${PYTHONPATH:+:$PYTHONPATH}"
export R2N2_DATA_DIR="$WORK/data"
PY="${PYTHON:-python}"
DEADLINE="${GPU_CHECKS_DEADLINE:-100000}"
STEPS=("$@"); [ ${#STEPS[@]} = 0 ] && STEPS=(bench graphs gputests probe paper budget eval levers loader compile speed compare nchw)

say() { echo "$*" | tee -a "$REPORT"; }
# step NAME COMMAND...: run it, its output into the report, its wall time and exit status after it
step() {
  local name="$1"; shift
  say ""; say "=== $name"; say "\$ $*"
  local start=$SECONDS
  "$@" 2>&1 | grep -v "it/s\]" | tail -n 80 | tee -a "$REPORT"
  local rc=${PIPESTATUS[0]}
  say "--- $name: exit $rc, $((SECONDS - start)) s"
}
# fits ESTIMATE_S: whether a step of about that many seconds ends before the deadline (else says so)
fits() {
  if [ $((SECONDS + $1)) -le "$DEADLINE" ]; then return 0; fi
  say ""; say "=== skipped (about $1 s left to the deadline of $DEADLINE s is not enough): $2"; return 1
}
summary() {  # one line per bench row of bench.json files
  for f in "$@"; do
    [ -f "$f" ] || continue
    "$PY" - "$f" <<'EOF' | tee -a "$REPORT"
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["rows"]:
    print(f"{sys.argv[1].split('/')[-2]:>16} batch {r['batch']:>4}: bare {r['bare_loop']:>9,.0f}  fit {r['trainer_fit']:>9,.0f}"
          f"  input {r['dataloader']:>9,.0f} samples/s  b/a {r['ratio']:.2f}  (b)-(a) {r['loop_ms_per_step']:.2f} ms/step  "
          f"({r['input_path']}, compile {r['compile']}, channels_last {r['channels_last']}, {r['precision']}, "
          f"{d['machine']}; {' '.join(r['overrides'])})")
EOF
  done
}

if [ "${GPU_CHECKS_TINY:-0}" = 1 ]; then  # a CPU rehearsal: tiny data, few steps, short budgets
  # 5 views per object: r2n2-compare draws 1..5 views per batch
  DATA=(data.source.objects_per_category=4 data.source.views=5 "data.source.categories=[chair,table,airplane]")
  BATCHES=(2 4); SMALL=2; LARGE=4; BENCH=(--warmup 1 --steps 2); PROBE=(--warmup 1 --steps 2); MINUTES=0.1; PAPER_SPLITS="{train:12,val:6,test:6}"
  BUDGET=(trainer.max_time=00:00:00:20 trainer.max_epochs=2 data.batch_size=4)
  EVAL=(views=[1,2] fscore.points=256)
else
  DATA=(); BATCHES=(8 256); SMALL=8; LARGE=256; BENCH=(--warmup 10 --steps 30); MINUTES="${GPU_CHECKS_MINUTES:-1}"
  PROBE=(--warmup 20 --steps 300 --rounds 3)
  PAPER_SPLITS="{train:20000,val:4000,test:1000}"
  # issue 12's budget: 2 minutes on one GPU, batch 64; the cosine schedule spans max_epochs, so 40
  # epochs is a guess at what 2 minutes hold (the run says how many it did)
  BUDGET=(trainer.max_time=00:00:02:00 trainer.max_epochs=40 data.batch_size=64)
  EVAL=()
fi
COMMON=(paths.data_dir="$R2N2_DATA_DIR" "${DATA[@]}")
BUDGET_RUN="$WORK/budget"

say "gpu_checks $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), steps: ${STEPS[*]}"
step "environment" "$PY" -c "
import torch, lightning, hydra, omegaconf
print('torch', torch.__version__, '| lightning', lightning.__version__, '| hydra', hydra.__version__)
print('cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-',
      '| bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())
from r2n2.utils.machine import describe_machine; print('machine:', describe_machine())
from r2n2.train.accelerator import choose; print('auto choice:', choose())"
command -v nvidia-smi >/dev/null && step "nvidia-smi" nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

for s in "${STEPS[@]}"; do
  case "$s" in
  bench)  # generates and caches the default synthetic data on first use
    fits 90 "$s" && step "bench: defaults (channels_last auto = on a GPU, cudnn.benchmark on)" \
      "$PY" -m r2n2.cli.bench --batch-sizes "${BATCHES[@]}" "${BENCH[@]}" --out "$OUT/bench_default" "${COMMON[@]}" ;;
  gputests)  # skip themselves without CUDA
    fits 90 "$s" && step "GPU tests (tests/test_gpu_path.py)" \
      "$PY" -m pytest -q -p no:cacheprovider tests/test_gpu_path.py -rs ;;
  graphs)
    fits 90 "$s" && step "bench: module.cuda_graph=true (the whole step as CUDA graphs)" "$PY" -m r2n2.cli.bench \
      --batch-sizes "${BATCHES[@]}" "${BENCH[@]}" --out "$OUT/bench_graphs" "${COMMON[@]}" module.cuda_graph=true
    fits 90 "$s" && step "bench: torch.compile (mode default)" "$PY" -m r2n2.cli.bench --batch-sizes "$LARGE" \
      "${BENCH[@]}" --out "$OUT/bench_compile" "${COMMON[@]}" module.compile=true ;;
  probe)
    fits 80 "$s" && step "bench --probe: the loop's own cost per step" "$PY" -m r2n2.cli.bench --probe \
      --batch-sizes "$SMALL" "${PROBE[@]}" --out "$OUT/bench_probe" "${COMMON[@]}" ;;
  loader)
    fits 90 "$s" && step "bench: the DataLoader path (data.device_data=false)" "$PY" -m r2n2.cli.bench \
      --batch-sizes "${BATCHES[@]}" "${BENCH[@]}" --out "$OUT/bench_loader" "${COMMON[@]}" data.device_data=false ;;
  budget)
    fits 170 "$s" && { rm -rf "$BUDGET_RUN"; step "2-minute budget: train.py ${BUDGET[*]}" "$PY" train.py "${COMMON[@]}" \
      "${BUDGET[@]}" logger=none trainer.enable_progress_bar=false hydra.run.dir="$BUDGET_RUN"; }
    [ -f "$BUDGET_RUN/metrics.json" ] && "$PY" - "$BUDGET_RUN/metrics.json" <<'EOF' | tee -a "$REPORT"
import json, sys
m = json.load(open(sys.argv[1]))
print("budget metrics.json:", json.dumps({k: v for k, v in m.items() if k.count("/") < 2}))
print("  per category (test):", {k.rsplit("/", 1)[-1]: round(v, 3) for k, v in m.items() if k.startswith("test/iou@0.3/")})
print("  training samples/s by epoch:", m.get("train_samples_per_second_by_epoch"))
EOF
    ;;
  eval)
    [ -f "$BUDGET_RUN/checkpoints/best.ckpt" ] && fits 150 "$s" && step "r2n2-eval of the budget run (1..5 views, F-score)" \
      "$PY" -m r2n2.cli.eval ckpt="$BUDGET_RUN/checkpoints/best.ckpt" "${EVAL[@]}" progress=false hydra.run.dir="$OUT/eval" ;;
  paper)  # generating its 530 objects x 6 views per category (~90 s on 16 cores), then 1 epoch
    fits 170 "$s" && { rm -rf "$WORK/paper"; step "experiment=paper, 1 epoch, module.cuda_graph=true" "$PY" train.py \
      experiment=paper "${COMMON[@]}" "data.splits=$PAPER_SPLITS" trainer.max_epochs=1 logger=none test=false \
      trainer.enable_progress_bar=false module.cuda_graph=true hydra.run.dir="$WORK/paper"; }
    [ -f "$WORK/paper/metrics.json" ] && "$PY" - "$WORK/paper/metrics.json" <<'EOF' | tee -a "$REPORT"
import json, sys
m = json.load(open(sys.argv[1]))
# the epoch's own wall time (fit_seconds also holds generating and packing its larger data set)
epoch = m["epoch_seconds_by_epoch"][0]
print(f"experiment=paper (module.cuda_graph=true): 1 epoch (train + validation) in {epoch:.1f} s, "
      f"{m['train_samples_per_second']:.0f} training samples/s; 50 epochs would take about {50 * epoch / 60:.1f} min "
      "(target <= 10)")
EOF
    ;;
  compile)
    fits 90 "$s" && step "bench: CUDA graphs of torch.compile (module.compile=reduce-overhead)" "$PY" -m r2n2.cli.bench \
      --batch-sizes "$SMALL" "${BENCH[@]}" --out "$OUT/bench_cudagraphs" "${COMMON[@]}" module.compile=reduce-overhead ;;
  speed)
    fits 70 "$s" && step "r2n2-compare --speed-only" "$PY" -m r2n2.cli.compare --speed-only \
      --models seed_gru r2n2_res_gru --speed-batches "${BATCHES[@]}" --out "$OUT/compare_speed" "${COMMON[@]}" ;;
  compare)
    fits "$(awk "BEGIN {print int(2 * $MINUTES * 60 + 60)}")" "$s" && step "r2n2-compare, $MINUTES min per model" \
      "$PY" -m r2n2.cli.compare --models seed_gru r2n2_res_gru --minutes "$MINUTES" --out "$OUT/compare" "${COMMON[@]}" ;;
  nchw)
    fits 60 "$s" && step "bench: channels_last off" "$PY" -m r2n2.cli.bench --batch-sizes "${BATCHES[@]}" "${BENCH[@]}" \
      --out "$OUT/bench_nchw" "${COMMON[@]}" module.channels_last=false ;;
  levers)  # each: 2 min of training, the test and baselines (and generating other data, if a lever asks)
    # in the CPU stand-in (benchmarks/overfit_proxy.py; test IoU over its category mean shape, base +0.028)
    # more objects helped most (+0.071: now the default, 128 x 6 views), 1..5 views next (+0.047), dropout
    # 0.8 within noise (+0.037), augmentation not at all (+0.025) (docs/ablation.md)
    IFS=';' read -r -a LEVERS <<< "${GPU_CHECKS_LEVERS:-data.views_per_sample=[1,5] trainer.max_epochs=14;model.dropout=0.8}"
    for i in "${!LEVERS[@]}"; do
      read -r -a lever <<< "${LEVERS[$i]}"
      run="$WORK/lever$i"; rm -rf "$run"
      fits 300 "$s ${LEVERS[$i]}" && step "2-minute budget + ${LEVERS[$i]}" "$PY" train.py "${COMMON[@]}" "${BUDGET[@]}" \
        "${lever[@]}" logger=none trainer.enable_progress_bar=false hydra.run.dir="$run"
      [ -f "$run/metrics.json" ] && "$PY" - "$run/metrics.json" "${LEVERS[$i]}" <<'EOF' | tee -a "$REPORT"
import json, sys
m = json.load(open(sys.argv[1]))
def b(k): return m.get(f"baseline/{k}_test_iou", float("nan"))
print(f"lever [{sys.argv[2]}]: test IoU@0.3 {m['test/iou']:.3f} | category mean shape {b('category_mean_shape'):.3f} "
      f"({m['test/iou'] - b('category_mean_shape'):+.3f}; target +0.15) | retrieval {b('retrieval'):.3f} | oracle "
      f"{b('oracle_nearest_neighbour'):.3f} | {m['epochs']} epochs, train IoU {m.get('train/iou', float('nan')):.3f} vs val "
      f"{m.get('val/iou', float('nan')):.3f}")
EOF
    done ;;
  *) say "unknown step $s (bench graphs gputests probe paper budget eval levers loader compile speed compare nchw)"; exit 2 ;;
  esac
done

say ""; say "=== summary"
summary "$OUT"/bench_*/bench.json
say "done in $SECONDS s"
