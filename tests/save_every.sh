#!/bin/sh
# metastep train --save-every N: a run killed (SIGKILL) in the middle
# leaves a loadable checkpoint of a multiple of N steps, and --resume from it
# ends with the parameters of an uninterrupted run.  Usage: save_every.sh METASTEP
set -eu
exe=$1
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
long="train --task sine --algo fomaml --meta-steps 1000000 --meta-batch 4 --eval-every 10000000 --eval-tasks 2 --quiet --threads 1"
"$exe" $long --save-every 7 --out "$d/k" >/dev/null 2>&1 &
job=$!
i=0
while [ ! -f "$d/k/checkpoint.safetensors" ]; do
  i=$((i + 1)); [ $i -lt 600 ] || fail "no checkpoint after 60 s"
  sleep 0.1
done
sleep 0.2
kill -9 $job
wait $job 2>/dev/null && fail "the run was not killed"
step=$(python3 -c '
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
o = 8 + n + h["meta/step"]["data_offsets"][0]
print(int(struct.unpack("<d", b[o:o + 8])[0]))' "$d/k/checkpoint.safetensors") || fail "the checkpoint does not load"
[ $((step % 7)) -eq 0 ] && [ "$step" -ge 7 ] || fail "checkpoint of step $step"
total=$((step + 5))
"$exe" $long --meta-steps $total --resume "$d/k" >/dev/null || fail "resume"
"$exe" $long --meta-steps $total --out "$d/full" >/dev/null || fail "uninterrupted run"
cmp "$d/k/params.safetensors" "$d/full/params.safetensors" || fail "resumed params differ"
[ "$(wc -l <"$d/k/log.csv")" -eq $((total + 1)) ] || fail "log.csv has $(wc -l <"$d/k/log.csv") lines"
echo "ok: killed after the checkpoint of step $step; resumed to step $total, params identical"
