#!/usr/bin/env bash
# Every GPU figure in one run, in at most 8 minutes on one GPU (a GPU is lent for minutes).
#
#   bash benchmarks/gpu.sh              # on a GPU machine: full-size models, bf16
#   bash benchmarks/gpu.sh --smoke      # on a CPU: tiny models, a few frames (what CI runs)
#
# 1. inference: full gc, gvos_scm and stm at 854x480, bf16, batch 1, 1 object; frames/s and
#    latency at t = 10, 100 and 1000 (benchmarks/inference_scaling.py);
# 2. training throughput at 384x384, bf16: clips/s and the fraction of time waiting for data,
#    for each model (benchmarks/train_throughput.py);
# 3. the same training figure on 2 GPUs when two are present (one process per GPU, each
#    with its own loader, as two Ray Train workers would run);
# 4. JSON under $OUT (default benchmarks/out/gpu) and rows ready to paste into
#    benchmarks/RESULTS.md (rows.md there, and printed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"

if [[ "${1:-}" == "--smoke" ]]; then
  SIZE=tiny DEVICE=cpu DTYPE=fp32 HEIGHT=61 WIDTH=97 FRAMES="5" RES=64 BATCH=2 STEPS=2 GPUS=0
else
  SIZE=full DEVICE=cuda DTYPE=bf16 HEIGHT=480 WIDTH=854 FRAMES="10 100 1000" RES=384 BATCH=8 STEPS=30
  GPUS=$(nvidia-smi -L 2>/dev/null | wc -l || echo 0)
  if [[ "$GPUS" -lt 1 ]]; then echo "gpu.sh: no GPU (nvidia-smi lists none); use --smoke on a CPU" >&2; exit 2; fi
fi
started=$(date +%s)
say() { echo "[gpu.sh $(( $(date +%s) - started )) s] $*"; }

say "inference: $SIZE gc, gvos_scm, stm at ${WIDTH}x${HEIGHT}, $DTYPE, t = $FRAMES"
timeout 240 "$PY" benchmarks/inference_scaling.py --models gc gvos_scm stm --size "$SIZE" \
  --device "$DEVICE" --dtype "$DTYPE" --height "$HEIGHT" --width "$WIDTH" --objects 1 \
  --frames $FRAMES --json "$OUT/inference.json"

say "shards for the training figures: procedural clips at ${RES}x${RES} (one local Ray)"
CLIPS=$(( BATCH * (STEPS + 4) * 2 ))
timeout 240 "$PY" pipelines/generate.py --config configs/generate_demo.yaml \
  output.url="$OUT/shards" source.procedural.count="$CLIPS" clips.size="$RES" \
  source.procedural.width=$(( RES * 5 / 4 > 160 ? RES * 5 / 4 : 160 )) \
  source.procedural.height=$(( RES > 120 ? RES : 120 )) clips.clips_per_shard=16 >/dev/null
MANIFEST="$OUT/shards/manifest.json"

for model in gc gvos_scm stm; do
  say "training throughput: $SIZE $model at ${RES}x${RES}, $DTYPE, batch $BATCH"
  timeout 120 "$PY" benchmarks/train_throughput.py --model "$model" --size "$SIZE" \
    --device "$DEVICE" --dtype "$DTYPE" --resolution "$RES" --batch-size "$BATCH" \
    --steps "$STEPS" --warmup 2 --manifest "$MANIFEST" --json "$OUT/train_${model}.json"
done

if [[ "$GPUS" -ge 2 ]]; then
  say "training throughput on 2 GPUs: gc, one process per GPU"
  for gpu in 0 1; do
    CUDA_VISIBLE_DEVICES=$gpu timeout 120 "$PY" benchmarks/train_throughput.py --model gc \
      --size "$SIZE" --device cuda --dtype "$DTYPE" --resolution "$RES" --batch-size "$BATCH" \
      --steps "$STEPS" --warmup 2 --manifest "$MANIFEST" --json "$OUT/train_gc_gpu${gpu}.json" &
  done
  wait
fi

say "rows for benchmarks/RESULTS.md"
"$PY" - "$OUT" <<'PYROWS'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
rows = ["| benchmark | model | figure |", "| --- | --- | --- |"]
inference = json.loads((out / "inference.json").read_text())
for model, figures in inference["models"].items():
    latency = figures["latency_ms_at"]
    line = " / ".join(f"{float(ms):.1f}" for ms in latency.values())
    ats = " / ".join(latency)
    fps = 1000 / float(list(latency.values())[0])
    rows.append(f"| inference | {model} | {fps:.1f} frames/s; {line} ms at t = {ats} |")
for path in sorted(out.glob("train_*.json")):
    figures = json.loads(path.read_text())["training"]
    name = path.stem.removeprefix("train_")
    clips, wait = figures["clips_per_s_per_worker"], figures["data_wait_fraction"]
    rows.append(f"| training | {name} | {clips:.1f} clips/s, {100 * wait:.1f} % waiting for data |")
text = "\n".join(rows) + "\n"
(out / "rows.md").write_text(text)
print(text)
PYROWS
say "done: JSON and rows.md in $OUT"
