#!/usr/bin/env bash
# One prepared check of recfunnel on a GPU machine; prints a short table at the end.
#
#   scripts/gpu-check.sh                  # sets up .venv with the CUDA variant (make setup VARIANT=cuda)
#   PYTHON=/usr/bin/python3 scripts/gpu-check.sh    # or uses an interpreter that already has CUDA torch,
#                                                   # torchrec and fbgemm-gpu (an offline machine)
#
# Steps: the CUDA set-up; `recfunnel bench train` on the GPU (TorchRec vs plain PyTorch vs the
# GPU's matmul roofline); MovieLens 100k prepared, then a two-tower and a DLRM trained on one GPU;
# with two GPUs or more, the DLRM again on 2 processes with nccl (`--launcher torchrun --nproc 2`).
# Each step's exit code, seconds and headline figure go in the table; logs in $OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT_DIR:-.demo/gpu-check}
mkdir -p "$OUT_DIR"
export MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$PWD/$OUT_DIR/mlflow.db}
rows=()

step() {  # step NAME LOG COMMAND...: run it, time it, keep its log
  local name=$1 log=$OUT_DIR/$2.log start end code
  shift 2
  start=$(date +%s.%N)
  "$@" >"$log" 2>&1
  code=$?
  end=$(date +%s.%N)
  rows+=("$(printf '%-34s %4s %8.1f' "$name" "$code" "$(awk -v a="$start" -v b="$end" 'BEGIN{print b-a}')")")
  return $code
}

if [ -n "${PYTHON:-}" ]; then
  step "set-up (pip install -e . --no-deps)" setup "$PYTHON" -m pip install -q --no-deps -e .
  RECFUNNEL=("$PYTHON" -m recfunnel.cli)
else
  step "set-up (make setup VARIANT=cuda)" setup make setup VARIANT=cuda
  PYTHON=.venv/bin/python
  RECFUNNEL=(.venv/bin/recfunnel)
fi
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
if [ "$gpus" = 0 ]; then
  echo "gpu-check: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False)" >&2
  exit 1
fi

step "bench train (DLRM, 1 GPU)" bench "${RECFUNNEL[@]}" bench train --json --steps 50
step "prepare MovieLens 100k" prepare "${RECFUNNEL[@]}" prepare movielens --variant ml-100k --out "$OUT_DIR/ml-100k" --overwrite --quiet
step "train two-tower (1 GPU)" tt "${RECFUNNEL[@]}" train --model two-tower --data "$OUT_DIR/ml-100k" --out "$OUT_DIR/tt" --overwrite --quiet
step "train dlrm (1 GPU)" dlrm "${RECFUNNEL[@]}" train --model dlrm --data "$OUT_DIR/ml-100k" --out "$OUT_DIR/dlrm" --overwrite --quiet --set train.sampled_negatives=4
if [ "$gpus" -ge 2 ]; then
  step "train dlrm (2 GPUs, nccl, torchrun)" dlrm2 "${RECFUNNEL[@]}" train --model dlrm --data "$OUT_DIR/ml-100k" --out "$OUT_DIR/dlrm2" --overwrite --quiet --set train.sampled_negatives=4 --launcher torchrun --nproc 2
fi

figure() {  # figure FILE EXPRESSION: a number out of a JSON file, or -
  "$PYTHON" -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1" 2>/dev/null || echo -
}
echo
"$PYTHON" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| GPUs:', torch.cuda.device_count(), '| torch', torch.__version__)"
printf '%-34s %4s %8s\n' "step" "exit" "seconds"
printf '%s\n' "${rows[@]}"
echo "bench train samples/s: recfunnel $(tail -n 1 "$OUT_DIR/bench.log" | "$PYTHON" -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['samples_per_s'], '| plain', d['plain_pytorch_samples_per_s'], '| vs plain', d['vs_plain'], '| device', d['device'])" 2>/dev/null || echo -)"
echo "two-tower test recall@100: $(figure "$OUT_DIR/tt/metrics.json" "d['test']['recall_at_100']"), samples/s $(figure "$OUT_DIR/tt/metrics.json" "d['train']['samples_per_s']")"
echo "dlrm test AUC: $(figure "$OUT_DIR/dlrm/metrics.json" "d['test']['auc']"), samples/s $(figure "$OUT_DIR/dlrm/metrics.json" "d['train']['samples_per_s']")"
[ -f "$OUT_DIR/dlrm2/metrics.json" ] && echo "dlrm on 2 GPUs test AUC: $(figure "$OUT_DIR/dlrm2/metrics.json" "d['test']['auc']"), samples/s $(figure "$OUT_DIR/dlrm2/metrics.json" "d['train']['samples_per_s']")"
exit 0
