#!/usr/bin/env bash
# Installs the edge into a virtualenv and an application directory: the Dockerfile's only
# install step, and what CI runs in a fresh directory (.ci/run), so the image recipe is run.
#   deploy/image/install.sh SRC VENV APP
# SRC: the source tree; VENV: the virtualenv to create; APP: where the code goes (the image's
# /app, its working directory). Needs Python 3.11+ as python3; wheels where PyPI has them
# (maxminddb 1.5.4 is source only: pure Python without a compiler).
set -euo pipefail
src=$(cd "$1" && pwd); venv=$2; app=$3
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ required" >&2; exit 1; }

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check \
  --prefer-binary -r "$src/requirements.txt"

# the runtime packages and their files only: no tests, benchmarks, lab or deploy tooling
mkdir -p "$app"
for item in manage.py signaling_site fleet geo relays transceivers access calls health dashboard \
            whip templates static topologies; do
  cp -a "$src/$item" "$app/"
done
find "$app" -name __pycache__ -prune -exec rm -rf {} +
find "$app" -name '*.so' -delete  # built here, for this Python, or not at all
# the C extensions (the relay's fast path relays/_fastpath.c, the transceiver's per-frame
# arithmetic transceivers/_media.c), where a compiler is (the image's build stage); without one
# the pure-Python paths serve
if command -v gcc >/dev/null 2>&1; then
  cp "$src/setup.py" "$app/setup.py"
  # setuptools comes with Python 3.11's venv
  (cd "$app" && "$venv/bin/python" setup.py -q build_ext --inplace >/dev/null)
  rm -rf "$app/setup.py" "$app/build"
  echo "built the C extensions"
else
  echo "no C compiler: the relay and transceiver will run their pure-Python paths"
fi
# collectstatic into APP/var/static (STATIC_ROOT); settings write nothing else at build time
EDGE_VAR_DIR="$app/var" "$venv/bin/python" "$app/manage.py" collectstatic --noinput -v0
# byte-code now: the root filesystem is read-only at run time
"$venv/bin/python" -m compileall -q "$app"
echo "installed: $("$venv/bin/python" --version) in $venv, app in $app"
