#!/usr/bin/env bash
# End to end on a local kind cluster: build both images, install KubeRay, an in-cluster S3 server
# and cpt-operator (Helm), run a tiny CPU CPTJob to Succeeded, print its status, tear down.
#
# Needs: docker (running), kind, kubectl, helm (`make setup` puts helm v3 in .tools/), network
# access to Docker Hub, ghcr.io and the KubeRay Helm repository. It cannot run on the project's
# CI machine (no Docker engine there). Unattended:  hack/kind-e2e.sh   (KEEP=1 keeps the cluster;
# E2E_PYTEST=1 also runs tests/e2e against it with an in-process operator.)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.tools:$PATH"
CLUSTER="${CLUSTER:-cpt-e2e}"
KEEP="${KEEP:-0}"
KUBERAY_VERSION="${KUBERAY_VERSION:-1.7.0}"

need() { command -v "$1" >/dev/null 2>&1 || { echo "kind-e2e: missing '$1' ($2)" >&2; exit 2; }; }
need docker "https://docs.docker.com/get-docker/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need helm "make setup installs it into .tools/"
docker info >/dev/null 2>&1 || { echo "kind-e2e: the Docker engine is not running" >&2; exit 2; }

step() { printf '\n== %s\n' "$*"; }
cleanup() {
  if [ "$KEEP" = 1 ]; then echo "kept cluster $CLUSTER (kind delete cluster --name $CLUSTER)"; else kind delete cluster --name "$CLUSTER"; fi
}
trap cleanup EXIT

step "kind cluster $CLUSTER"
kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 180s

step "images"
docker build -f operator/Dockerfile -t cpt-operator:e2e .
docker build -f trainer/Dockerfile -t cpt-trainer:e2e \
  --build-arg BASE=rayproject/ray:2.60.0-py311-cpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
kind load docker-image cpt-operator:e2e cpt-trainer:e2e --name "$CLUSTER"

step "KubeRay $KUBERAY_VERSION"
helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update >/dev/null
helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "$KUBERAY_VERSION" \
  -n kuberay-system --create-namespace --wait --timeout 5m

step "S3 server, credentials, example data"
kubectl create namespace s3 --dry-run=client -o yaml | kubectl apply -f -
kubectl -n s3 apply -f hack/kind/seaweedfs.yaml
kubectl -n s3 rollout status deploy/seaweedfs --timeout=300s
kubectl create namespace ml-team --dry-run=client -o yaml | kubectl apply -f -
kubectl -n ml-team create secret generic s3-credentials \
  --from-literal=AWS_ACCESS_KEY_ID=cptadmin --from-literal=AWS_SECRET_ACCESS_KEY=cptadminsecret \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl -n ml-team delete job upload-data --ignore-not-found
kubectl -n ml-team apply -f hack/kind/upload-data.yaml
kubectl -n ml-team wait --for=condition=complete job/upload-data --timeout=600s

step "cpt-operator (Helm)"
# privateEndpoints: the in-cluster S3 server (docs/security.md); watchNamespaces: the tenant namespace (a Role there)
helm upgrade --install cpt-operator charts/cpt-operator -n cpt-system --create-namespace --wait --timeout 5m \
  --set image.repository=cpt-operator --set image.tag=e2e --set image.pullPolicy=Never \
  --set trainerImage.repository=cpt-trainer --set trainerImage.tag=e2e --set trainerImage.pullPolicy=Never \
  --set 'policy.storage.privateEndpoints={seaweedfs.s3.svc:8333}' \
  --set 'watchNamespaces={ml-team}'

step "a tiny CPU CPTJob"
kubectl apply -f hack/kind/tiny-cptjob.yaml
if ! kubectl -n ml-team wait cptjob/tiny --for=jsonpath='{.status.phase}'=Succeeded --timeout=1800s; then
  kubectl -n ml-team describe cptjob tiny || true
  kubectl -n ml-team get rayjobs,pods -o wide || true
  kubectl -n cpt-system logs deploy/cpt-operator --tail=200 || true
  exit 1
fi
kubectl -n ml-team get cptjob tiny -o wide
kubectl -n ml-team get cptjob tiny -o jsonpath='{.status}' | python3 -m json.tool

if [ "${E2E_PYTEST:-0}" = 1 ]; then
  step "tests/e2e (in-process operator against this cluster)"
  helm uninstall cpt-operator -n cpt-system
  CPT_E2E_S3_ENDPOINT=http://seaweedfs.s3.svc:8333 CPT_E2E_TRAINER_IMAGE=cpt-trainer:e2e .venv/bin/pytest tests/e2e -v
fi
echo "kind-e2e: OK"
