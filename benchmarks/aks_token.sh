#!/usr/bin/env bash
# kubectl's exec credential plugin for the tutorial baseline (benchmarks/tutorial.sh): an Entra token for the AKS
# server application ($1) from az, as an ExecCredential on stdout for kubectl alone (what kubelogin's azurecli mode
# does). Each run is one more az command, logged to BENCH_LOG like the others.
set -euo pipefail
started=$EPOCHREALTIME
az account get-access-token --resource "$1" --only-show-errors -o json \
    --query "{apiVersion: 'client.authentication.k8s.io/v1beta1', kind: 'ExecCredential', status: {token: accessToken}}"
printf 'az\taccount get-access-token (kubectl)\t%s\t0\n' "$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN {print b - a}')" \
    >>"$BENCH_LOG"
