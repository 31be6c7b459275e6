#!/usr/bin/env bash
# Installs what the tests need and runs every test: formatting, lints, docs, the Rust
# tests, then the Python suite (healpy, astropy, hats, lsdb, hats-import as oracles)
# against the real meridian binary. Used as is by .ci/run.
set -euo pipefail
shopt -s inherit_errexit 2>/dev/null || true
cd "$(dirname "$0")/.."

# Build outputs live outside the clone so repeated runs are incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "system packages"
# stilts (taplint, votlint) validates the TAP service; CDS's Hipsgen (in Debian's aladin)
# is the oracle for HiPS tiles; Chromium runs Aladin Lite on the HiPS Meridian serves;
# mold links the test binaries (each holds DataFusion and Ballista) several times faster
# than the default linker.
if ! command -v stilts >/dev/null || [ ! -f /usr/share/java/aladin.jar ] \
    || [ ! -x /usr/lib/chromium/chromium ] || ! command -v mold >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq stilts aladin chromium mold >/dev/null
fi
if command -v mold >/dev/null; then
    export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-fuse-ld=mold"
fi

step "browser packages"
# Aladin Lite, from the committed lock file (Playwright drives Debian's Chromium: no
# browser is downloaded).
(cd tests/browser && npm ci --silent --no-audit --no-fund)

step "python packages"
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# Clients that pin dependencies of their own live in venvs of their own, which the tests
# find through DATALAB_PYTHON (Data Lab's astro-datalab pins old numpy, astropy and pyvo)
# and VOS_PYTHON (CADC's vos).
client_venv() { # python, module it must import, requirements to install
    local python="$1" module="$2" venv
    shift 2
    "$python" -c "import $module" 2>/dev/null && return
    venv="$(dirname "$(dirname "$python")")"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's own Python keeps venv in a package of its own.
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$python" -m pip install --quiet --disable-pip-version-check "$@"
}
export DATALAB_PYTHON="${DATALAB_PYTHON:-$HOME/.cache/meridian/datalab-venv/bin/python}"
client_venv "$DATALAB_PYTHON" dl.queryClient astro-datalab==2.24.0
export VOS_PYTHON="${VOS_PYTHON:-$HOME/.cache/meridian/vos-venv/bin/python}"
client_venv "$VOS_PYTHON" vos vos==3.7
# sparclclient 1.3.1 pins numpy < 2.4 and pandas < 2.2; its specutils is also the oracle of
# the spectra stacks.
export SPARCL_PYTHON="${SPARCL_PYTHON:-$HOME/.cache/meridian/sparcl-venv/bin/python}"
client_venv "$SPARCL_PYTHON" sparcl.client sparclclient==1.3.1 numpy==1.26.4 pandas==2.1.4

step "notebook hub"
# JupyterHub, JupyterLab, the kernels' clients and the proxy, for the notebook tests
# (tests/python/test_notebook*.py); the same script sets up a deployment.
./scripts/notebooks-setup.sh

step "kafka broker (Tansu)"
# Tansu, a Kafka-protocol broker (crates.io, Apache-2.0), is the real broker of the alert
# stream's end-to-end test (tests/python/test_alert_night.py). Built once into the cache:
# about 10 minutes on 2 cores the first time.
TOOLS="$HOME/.cache/meridian/tools"
if ! "$TOOLS/bin/tansu" --version 2>/dev/null | grep -qx "tansu 0.6.0"; then
    cargo install tansu --version 0.6.0 --locked --features dynostore --root "$TOOLS" \
        --target-dir "$HOME/.cache/meridian/tansu-target" --quiet
    rm -rf "$HOME/.cache/meridian/tansu-target"
fi
export MERIDIAN_TANSU="$TOOLS/bin/tansu"

# The web portal (web/) is built by meridian-portal's build script with npm and node; here a
# portal that cannot be built is a failure, not a placeholder page.
export MERIDIAN_PORTAL_REQUIRED=1

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

step "portal component tests (vitest)"
# node_modules is there from the build script's `npm ci` (or MERIDIAN_PORTAL_DIST was set).
[ -d web/node_modules/vitest ] || (cd web && npm ci --silent --no-audit --no-fund)
(cd web && NO_COLOR=1 node node_modules/vitest/vitest.mjs run --reporter=dot) | tee "$CARGO_TARGET_DIR/vitest.log"
js_passed=$(grep -Eo 'Tests +[0-9]+ passed' "$CARGO_TARGET_DIR/vitest.log" | grep -Eo '[0-9]+' || echo 0)

step "cargo test"
cargo test --workspace --quiet 2>&1 | tee "$CARGO_TARGET_DIR/cargo-test.log"
rust_passed=$(grep -Eo '[0-9]+ passed' "$CARGO_TARGET_DIR/cargo-test.log" | awk '{s+=$1} END {print s+0}')
rust_failed=$(grep -Eo '[0-9]+ failed' "$CARGO_TARGET_DIR/cargo-test.log" | awk '{s+=$1} END {print s+0}')

step "python tests"
cargo build --quiet -p meridian
export TEST_MERIDIAN_BIN="$CARGO_TARGET_DIR/debug/meridian"
python3 -m pytest tests/python -q -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning \
    | tee "$CARGO_TARGET_DIR/pytest.log"
py_passed=$(tail -n 1 "$CARGO_TARGET_DIR/pytest.log" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+' || echo 0)

step "done"
echo "rust tests: $rust_passed passed; portal component tests: $js_passed passed; python tests: $py_passed passed"
echo "tests: $((rust_passed + js_passed + py_passed)) passed, $rust_failed failed"
