#!/usr/bin/env bash
# lmforge's training step next to a PyTorch peer, at two shapes, in one run on one GPU:
#   GPT-2 124M (configs/decoder/gpt2_small.py, 32 x 1,024)   target >= 600,000 tokens/s
#   1.3B decoder (configs/decoder/decoder_1b.py, 16 x 2,048)  target >= 50 % MFU
# Each run appends one JSON line (research.benchmark's or benchmarks/peer_gpt2_torch.py's, plus
# "label", "run" and "host") to RESULTS; every line of one invocation shares its "run" stamp.
#
#   benchmarks/gpu_side_by_side.sh [RESULTS]        # default benchmarks/results/side_by_side.jsonl
#
# Environment: PYTHON (python3), STEPS (timed steps, 20), WHEELS (a directory of wheels that
# pip installs from, offline, when an lmforge dependency is missing), EXTRA=1 (also lmforge
# variants: GPT-2 with the loss in chunks, GPT-2 with XLA attention), MODE=cpu (a smoke run on
# CPU: GPT-2 at one sequence, the peer uncompiled, the 1.3B shape as its :tiny variant).
#
# The GPU machine needs jax[cuda], torch and transformers, and lmforge's pure-Python
# dependencies for `import research.benchmark`: flax, optax, orbax-checkpoint, ml_collections,
# absl-py, sentencepiece, tqdm (no TensorFlow, no tensorflow-datasets). Without network access,
# build the wheels on a connected machine of the same Python version first, e.g.
#   pip download -d wheels --python-version 3.12 --only-binary=:all: ml_collections absl-py \
#       sentencepiece tqdm
# (add flax optax orbax-checkpoint if the machine lacks them) and run with WHEELS=wheels.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=${1:-benchmarks/results/side_by_side.jsonl}
STEPS=${STEPS:-20}
MODE=${MODE:-gpu}
RUN=$(date -u +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$(dirname "$RESULTS")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

deps="jax flax optax orbax.checkpoint ml_collections absl sentencepiece tqdm torch transformers"
missing() {
  "$PYTHON" -c "
import importlib.util, sys
def found(m):
  try:
    return importlib.util.find_spec(m) is not None
  except ImportError:
    return False
print(' '.join(m for m in sys.argv[1:] if not found(m)))" $deps
}
need=$(missing)
if [ -n "$need" ] && [ -n "${WHEELS:-}" ]; then
  pkgs=$(echo "$need" | sed -e 's/orbax.checkpoint/orbax-checkpoint/' -e 's/\babsl\b/absl-py/')
  echo "installing from $WHEELS: $pkgs" >&2
  "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" $pkgs >&2
  need=$(missing)
fi
if [ -n "$need" ]; then
  echo "missing Python modules: $need (see the header of $0 for WHEELS)" >&2
  exit 2
fi
if [ "$MODE" = gpu ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true
fi

# run LABEL COMMAND...: runs it, keeps its last stdout line (the JSON), adds label/run/host.
run() {
  local label=$1; shift
  echo "== $label: $*" >&2
  local log; log=$(mktemp)
  "$@" >"$log.out" 2>"$log"
  local rc=$?
  local line; line=$(tail -n 1 "$log.out")
  "$PYTHON" - "$label" "$RUN" "$rc" "$line" "$log" "$*" >>"$RESULTS" <<'EOF'
import json, socket, sys
label, run, rc, line, log, command = sys.argv[1:]
try:
  record = json.loads(line)
except ValueError:
  record = {'error': f'exit {rc}', 'stderr_tail': open(log).read()[-2000:]}
record.update(label=label, run=run, host=socket.gethostname(), command=command)
print(json.dumps(record))
EOF
  tail -n 1 "$RESULTS" >&2
  rm -f "$log" "$log.out"
  return "$rc"
}

bench="$PYTHON -m research.benchmark --steps=$STEPS"
peer="$PYTHON benchmarks/peer_gpt2_torch.py --steps=$STEPS"
if [ "$MODE" = cpu ]; then
  run lmforge/gpt2_small $bench --config=configs/decoder/gpt2_small.py
  run torch/gpt2_small $peer --device=cpu --no-compile --batch_size=1
  run lmforge/decoder_1b:tiny $bench --config=configs/decoder/decoder_1b.py:tiny
  run torch/decoder_1b:tiny $peer --device=cpu --no-compile --batch_size=1 --n_layer=2 \
      --n_embd=64 --n_head=2 --seq_len=64 --vocab_size=512
  exit 0
fi

run lmforge/gpt2_small $bench --config=configs/decoder/gpt2_small.py
run torch/gpt2_small $peer --batch_size=32 --seq_len=1024
run lmforge/decoder_1b $bench --config=configs/decoder/decoder_1b.py ||
  run lmforge/decoder_1b+remat_dots $bench --config=configs/decoder/decoder_1b.py \
      --config.model.remat=dots
run torch/decoder_1b $peer --n_layer=24 --n_embd=2048 --n_head=16 --seq_len=2048 \
    --batch_size=16 --micro_batches=4
if [ "${EXTRA:-0}" = 1 ]; then
  run lmforge/gpt2_small+loss_chunk_256 $bench --config=configs/decoder/gpt2_small.py \
      --config.model.loss_chunk_size=256
  run lmforge/gpt2_small+xla_attention $bench --config=configs/decoder/gpt2_small.py \
      --config.model.attention.implementation=xla
fi
