#!/usr/bin/env bash
# GPU smoke test: every command that runs the network, on one device, end to end.
#
#   bash benchmarks/gpu_smoke.sh            # on the first GPU (fails at once without one)
#   bash benchmarks/gpu_smoke.sh --cpu      # the same checks on the CPU (also: SMOKE_DEVICE=cpu)
#
# Checks, one summary line each (PASS / FAIL / SKIP, seconds):
#   train 20 steps of a tiny model, resume to 30 (on a GPU: resume once more on the CPU);
#   the DDP pair (torchrun, 2 ranks: nccl when 2+ GPUs are present, gloo in --cpu mode),
#   trained and resumed; a sample from every sampler; eval of the shipped mnist model;
#   compress 16 digits with it in each arithmetic, decompress in a fresh process on the same
#   device (exact), and on the CPU: exact (portable, and every file in --cpu mode) or
#   refused with one line (float files coded on a GPU).
# Writes benchmarks/results/gpu_smoke_<cuda|cpu>.md with the command, date, machine, CPU
# features, the GPU's fingerprint and the lines. Under 10 minutes on one GPU (the coding
# runs at T = 16 on 16 digits; the tiny model trains in seconds); about as long on a CPU.
# Runs from the repository root; uses the worktree's code (python -m cli.main).
set -u
cd "$(dirname "$0")/.."
DEVICE="${SMOKE_DEVICE:-cuda}"
[ "${1:-}" = "--cpu" ] && DEVICE=cpu
PY="${PYTHON:-python}"
VDM=("$PY" -m cli.main)
WORK="$(mktemp -d -t vdmcodec-smoke-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
LINES=()
FAILED=0
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

say() {  # status name seconds detail
  local line
  line="$(printf '%-4s  %-44s %6ss  %s' "$1" "$2" "$3" "$4")"
  echo "$line"
  LINES+=("$line")
  [ "$1" = "FAIL" ] && FAILED=$((FAILED + 1))
  return 0
}

run() {  # name detail-on-success cmd...: PASS if the command exits 0
  local name="$1" ok="$2" t0 t1
  shift 2
  t0=$(date +%s)
  if "$@" >"$WORK/last.out" 2>"$WORK/last.err"; then
    t1=$(date +%s); say PASS "$name" $((t1 - t0)) "$ok"
  else
    t1=$(date +%s); say FAIL "$name" $((t1 - t0)) "$(tail -n 1 "$WORK/last.err")"
  fi
}

refused() {  # name cmd...: PASS if the command fails with one line on stderr and writes no folder
  local name="$1" t0 t1
  shift
  t0=$(date +%s)
  if "$@" >"$WORK/last.out" 2>"$WORK/last.err"; then
    t1=$(date +%s); say FAIL "$name" $((t1 - t0)) "decoded, but should have been refused"
  elif [ "$(grep -c . "$WORK/last.err")" = 1 ] && grep -q "^error: " "$WORK/last.err"; then
    t1=$(date +%s); say PASS "$name" $((t1 - t0)) "refused: $(cut -c 1-90 "$WORK/last.err")..."
  else
    t1=$(date +%s); say FAIL "$name" $((t1 - t0)) "not one clear line: $(tail -n 1 "$WORK/last.err")"
  fi
}

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [ "$DEVICE" != cpu ] && [ "$GPUS" = 0 ]; then
  echo "error: no CUDA device visible to torch; run with --cpu (or SMOKE_DEVICE=cpu) for the CPU checks" >&2
  exit 2
fi
ENV_LINE="$("$PY" - "$DEVICE" <<'EOF'
import platform, sys, torch
from vdmcodec.hardware import cpu_capability, device_fingerprint
from vdmcodec.coding.determinism import PRECISION_MODE
dev = sys.argv[1]
gpu = device_fingerprint(dev, PRECISION_MODE) if dev != "cpu" else "none used"
print(f"torch {torch.__version__}; {platform.machine()} ({cpu_capability()}); GPU: {gpu}")
EOF
)"
echo "device $DEVICE; $ENV_LINE"

# ---- data: the bundled digits, 12 to train on and 4 to validate ---------------------------
mkdir -p "$WORK/train" "$WORK/val" "$WORK/digits"
i=0
for f in samples/mnist/*.png; do
  cp "$f" "$WORK/digits/"
  if [ $i -lt 12 ]; then cp "$f" "$WORK/train/"; else cp "$f" "$WORK/val/"; fi
  i=$((i + 1))
done
cat >"$WORK/tiny.json" <<'EOF'
{"model": {"network": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1}, "schedule": {"hidden": 16}},
 "train": {"batch_size": 16, "lr_warmup": 5, "eval_every": 10, "eval_images": 4, "ckpt_every": 10, "log_every": 5,
           "threads": 1}}
EOF
TRAIN=(train --data "$WORK/train" --val "$WORK/val" --config "$WORK/tiny.json" --no-progress)

# ---- training ------------------------------------------------------------------------------
card() {  # run-dir key
  "$PY" -c "import json, sys; print(json.load(open(sys.argv[1] + '/model.json'))['card'].get(sys.argv[2]))" "$1" "$2"
}
run "train 20 steps on $DEVICE" "checkpoint at step 20" "${VDM[@]}" "${TRAIN[@]}" --out "$WORK/run" --steps 20 --device "$DEVICE"
run "resume to 30 on $DEVICE" "card: 30 steps" "${VDM[@]}" "${TRAIN[@]}" --out "$WORK/run" --steps 30 --resume --device "$DEVICE"
STEPS="$(card "$WORK/run" steps 2>/dev/null)"; KIND="$(card "$WORK/run" device 2>/dev/null)"
if [ "$STEPS" = 30 ] && [ "$KIND" = "${DEVICE%%:*}" ]; then
  say PASS "card after resume" 0 "steps $STEPS, device $KIND, cpu_hours $(card "$WORK/run" cpu_hours), gpu_hours $(card "$WORK/run" gpu_hours)"
else
  say FAIL "card after resume" 0 "steps $STEPS, device $KIND"
fi
if [ "$DEVICE" != cpu ]; then
  run "resume the GPU checkpoint on the cpu to 35" "same checkpoint, other device" \
    "${VDM[@]}" "${TRAIN[@]}" --out "$WORK/run" --steps 35 --resume --device cpu
fi
TORCHRUN=(torchrun --standalone --nproc_per_node=2 -m cli.main)
if [ "$DEVICE" != cpu ] && [ "$GPUS" -ge 2 ]; then
  run "DDP pair (nccl) 10 steps" "2 ranks" "${TORCHRUN[@]}" "${TRAIN[@]}" --out "$WORK/ddp" --steps 10 --device cuda
  run "DDP pair (nccl) resume to 15" "per-rank random state" "${TORCHRUN[@]}" "${TRAIN[@]}" --out "$WORK/ddp" --steps 15 --resume --device cuda
elif [ "$DEVICE" = cpu ]; then
  run "DDP pair (gloo) 10 steps" "2 ranks" "${TORCHRUN[@]}" "${TRAIN[@]}" --out "$WORK/ddp" --steps 10 --device cpu
  run "DDP pair (gloo) resume to 15" "per-rank random state" "${TORCHRUN[@]}" "${TRAIN[@]}" --out "$WORK/ddp" --steps 15 --resume --device cpu
else
  say SKIP "DDP pair (nccl)" 0 "needs 2 GPUs, found $GPUS"
fi

# ---- sampling: every sampler, on the trained run -----------------------------------------------
for s in $("$PY" -c "from vdmcodec.sampling import SAMPLERS; print(' '.join(SAMPLERS))"); do
  run "sample: $s" "4 samples, 6 steps" "${VDM[@]}" sample --model "$WORK/run" --sampler "$s" --steps 6 -n 4 \
    -o "$WORK/sample_$s.png" --device "$DEVICE" --no-progress
done

# ---- eval -----------------------------------------------------------------------------------------
run "eval mnist (continuous and T = 16)" "" "${VDM[@]}" eval --data "$WORK/digits" --model mnist --steps 16 --device "$DEVICE" --no-progress
EVAL="$(tail -n 2 "$WORK/last.out" | tr '\n' ';' | sed 's/;$//')"
LINES[-1]="${LINES[-1]}$EVAL"
echo "      $EVAL"

# ---- coding: each arithmetic, decoded in fresh processes on the device and on the CPU -------------
same() {  # folder: the decoded digits equal the originals
  "$PY" - "$1" "$WORK/digits" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
a, b = Path(sys.argv[1]), Path(sys.argv[2])
files = sorted(b.glob("*.png"))
bad = [f.name for f in files if not np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(a / f.name)))]
sys.exit(1 if bad or not files else 0)
EOF
}
decoded() {  # name folder cmd...: PASS if the command exits 0 and the folder holds the digits exactly
  local name="$1" folder="$2" t0 t1
  shift 2
  t0=$(date +%s)
  if "$@" >/dev/null 2>"$WORK/last.err" && same "$folder"; then
    t1=$(date +%s); say PASS "$name" $((t1 - t0)) "exact"
  else
    t1=$(date +%s); say FAIL "$name" $((t1 - t0)) "$(tail -n 1 "$WORK/last.err")"
  fi
}
BF16=$("$PY" -c "from vdmcodec.hardware import native_bf16; print(int(native_bf16('$DEVICE')))")
for A in float32 float32-nhwc bfloat16-nhwc portable; do
  if [ "$A" = bfloat16-nhwc ] && [ "$BF16" = 0 ]; then
    say SKIP "code in $A" 0 "no native bfloat16 on $DEVICE"
    continue
  fi
  F="$WORK/digits_$A.vdmc"
  run "compress on $DEVICE in $A" "" "${VDM[@]}" compress "$WORK/digits" -o "$F" --model mnist --steps 16 \
    --arithmetic "$A" --device "$DEVICE" --no-progress --json
  USED="$("$PY" -c "import json,sys; h=json.loads(sys.stdin.read()); print(h['method_counts'].get('vdm', 0), h.get('device'))" \
    < <("${VDM[@]}" info "$F" --json 2>/dev/null) 2>/dev/null)"
  LINES[-1]="${LINES[-1]}chain-coded images, device record: $USED"
  echo "      chain-coded images, device record: $USED"
  D="$WORK/out_${A}_same"
  decoded "decode $A in a fresh process on $DEVICE" "$D" "${VDM[@]}" decompress "$F" -o "$D" --device "$DEVICE" --no-progress
  if [ "$DEVICE" = cpu ]; then
    continue
  fi
  D="$WORK/out_${A}_cpu"
  if [ "$A" = portable ]; then
    decoded "decode the GPU's $A file on the cpu" "$D" "${VDM[@]}" decompress "$F" -o "$D" --device cpu --no-progress
  else
    refused "decode the GPU's $A file on the cpu" "${VDM[@]}" decompress "$F" -o "$D" --device cpu --no-progress
  fi
done

# ---- summary ------------------------------------------------------------------------------------
KIND="${DEVICE%%:*}"
OUT="benchmarks/results/gpu_smoke_$KIND.md"
{
  echo "# GPU smoke test ($KIND)"
  echo
  echo "Command: \`bash benchmarks/gpu_smoke.sh${1:+ $1}\` (SMOKE_DEVICE=${SMOKE_DEVICE:-unset}), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null)."
  echo "Machine: $(uname -m), $(getconf _NPROCESSORS_ONLN) CPUs; $ENV_LINE."
  echo
  echo '```'
  printf '%s\n' "${LINES[@]}"
  echo '```'
  echo
  echo "$FAILED failed."
} >"$OUT"
echo "$FAILED failed; wrote $OUT"
[ "$FAILED" = 0 ]
