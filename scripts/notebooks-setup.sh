#!/usr/bin/env bash
# Installs what the notebook hub needs ([notebooks] in meridian.toml; docs/notebooks.md)
# into ~/.cache/meridian/notebooks, where the configuration's defaults look:
#   hub/             JupyterHub, JupyterLab, oauthenticator, the idle culler, meridian-notebooks
#   kernel/          the "Meridian" kernel: pyvo, astropy, lsdb, hats, matplotlib
#   datalab-kernel/  the "Data Lab" kernel: astro-datalab (dl) and sparclclient
#   node_modules/    configurable-http-proxy (npm, from notebooks/package-lock.json)
#   examples/        the example notebooks (notebooks/examples), copied into each user's
#                    storage
# Each environment is made again only when its requirements changed. Run by the test
# command; run it yourself before enabling notebooks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${MERIDIAN_NOTEBOOKS_HOME:-$HOME/.cache/meridian/notebooks}"
mkdir -p "$ROOT"

venv() { # directory, requirements file: a venv with those, and meridian-notebooks
    local dir="$ROOT/$1" req="$2" stamp
    # --copies: bin/python is the environment's own file, not a link to the system's
    # Python, so the hub names each kernel after its environment's directory
    # (meridian_hub.config.kernel_name resolves links). "copies" is in the stamp so that
    # environments made with links are made again.
    stamp="$( (cat "$req" notebooks/python/pyproject.toml; echo copies) | sha256sum | cut -c1-16)"
    if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.stamp" 2>/dev/null)" = "$stamp" ]; then
        # The package's code may have changed with the same requirements.
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
            --force-reinstall ./notebooks/python
        return
    fi
    rm -rf "$dir"
    if ! python3 -m venv --copies "$dir" 2>/dev/null; then
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$dir"
        python3 -m venv --copies "$dir"
    fi
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" ./notebooks/python
    echo "$stamp" > "$dir/.stamp"
}

venv hub notebooks/requirements-hub.txt
venv kernel notebooks/requirements-kernel.txt
venv datalab-kernel notebooks/requirements-datalab-kernel.txt

# Both kernels load meridian.kernel at start (an IPython extension named in
# <venv>/etc/ipython/ipython_kernel_config.py): Data Lab's dl and sparclclient, when
# imported, are pointed at MERIDIAN_URL with MERIDIAN_TOKEN.
for k in kernel datalab-kernel; do
    "$ROOT/$k/bin/python" -m meridian.kernel install >/dev/null
done

# The proxy, from the committed lock file.
cp notebooks/package.json notebooks/package-lock.json "$ROOT/"
(cd "$ROOT" && npm ci --silent --no-audit --no-fund)

rm -rf "$ROOT/examples"
cp -r notebooks/examples "$ROOT/examples"
echo "notebook hub installed in $ROOT"
