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
# stilts (taplint, votlint) validates the TAP service.
if ! command -v stilts >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq stilts >/dev/null
fi

step "python packages"
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
# Data Lab's own client pins old numpy, astropy and pyvo: it lives in a venv of its own,
# which the tests find through DATALAB_PYTHON.
export DATALAB_PYTHON="${DATALAB_PYTHON:-$HOME/.cache/meridian/datalab-venv/bin/python}"
if ! "$DATALAB_PYTHON" -c "import dl.queryClient" 2>/dev/null; then
    venv="$(dirname "$(dirname "$DATALAB_PYTHON")")"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        # Debian's own Python keeps venv in a package of its own.
        sudo_cmd=""
        [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
        DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$DATALAB_PYTHON" -m pip install --quiet --disable-pip-version-check astro-datalab==2.24.0
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

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
echo "rust tests: $rust_passed passed; python tests: $py_passed passed"
echo "tests: $((rust_passed + py_passed)) passed, $rust_failed failed"
