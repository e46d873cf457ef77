#!/bin/bash
# The whole default study at two revisions, one after the other on this machine: each in a
# fresh clone of this repository (its own data/, this venv, the GGUF conversion copied in so
# neither run pays it), `kedro run --pipelines=phase4` timed, then benchmarks/phase4_stages.py
# on its ledger (the bare-forward rate measured right after each run shows the machine's
# drift between them). Reports land in $OUT/<label>/data/08_reporting/ for a diff.
#
#   benchmarks/phase4_revisions.sh [REV_A] [REV_B] [OUT]     (default: origin of this work
#   and HEAD: 6fc251e HEAD /tmp/phase4_revisions)
set -u
repo=$(git rev-parse --show-toplevel)
a=${1:-6fc251e}; b=${2:-HEAD}; out=${3:-/tmp/phase4_revisions}
[ -d "$repo/data/06_models/converted" ] || (cd "$repo" && .venv/bin/python -m sae_reasoning.models.prepare)
for rev in "$a" "$b"; do
  d="$out/$rev"; rm -rf "$d"; git clone -q "$repo" "$d"; (cd "$d" && git checkout -q "$rev")
  ln -s "$repo/.venv" "$d/.venv"
  mkdir -p "$d/data/06_models" && cp -r "$repo/data/06_models/converted" "$d/data/06_models/"
done
for rev in "$a" "$b"; do
  d="$out/$rev"; cd "$d" || exit 1
  echo "== $rev ($(git rev-parse --short HEAD)) start $(date +%T), load $(cut -d' ' -f1-3 /proc/loadavg)"
  s=$(date +%s.%N); PYTHONPATH="$d/src" .venv/bin/kedro run --pipelines=phase4 > "$d/run.log" 2>&1
  rc=$?; echo "$rev: kedro run --pipelines=phase4 rc=$rc wall $(echo "$(date +%s.%N) - $s" | bc) s"
  PYTHONPATH="$d/src" .venv/bin/python benchmarks/phase4_stages.py --json "$d/stages.json" 2>&1 |
    grep -E "^(best|capture|baseline|sae_training|evaluate_sae|causal|all nodes|  capture)"
done
