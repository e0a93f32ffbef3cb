#!/usr/bin/env bash
# Runs one stage of `make test`, prints how long it took, and records it in build/stage-times.txt
# so that pytest's summary can repeat the figures after the tests.
set -euo pipefail
name=$1; shift
start=$EPOCHREALTIME
"$@"
took=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
mkdir -p build
echo "$name $took" >> build/stage-times.txt
echo "[stage] $name took ${took}s"
