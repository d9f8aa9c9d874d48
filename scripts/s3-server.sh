#!/usr/bin/env bash
# Runs the S3 backend (engine feature `s3`, real build) against a local S3-compatible server:
# installs the moto server from PyPI if needed, starts it on 127.0.0.1, creates a bucket, runs
# the given mode, and stops the server.
#
#   scripts/s3-server.sh          the S3 tests: unit tests, the object-store conformance suite
#                                 and the bad-input tests (engine/tests/s3_object_store.rs)
#   scripts/s3-server.sh bench    engine/examples/object_store_bench.rs: S3 next to the local store
#
# Exit status: 0 passed, 3 when no server could be installed or started (nothing was tested),
# anything else a failure. Builds go to ${CARGO_TARGET_DIR:-target}/std (the real build).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-test}"
case "$mode" in
  test | bench) ;;
  *) echo "usage: $0 [test|bench]" >&2; exit 2 ;;
esac

no_server() { echo "s3-server: $*" >&2; exit 3; }

python=$(command -v python3 || true)
[ -n "$python" ] || no_server "no python3 on this machine"
has_moto() { "$1" -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1; }
if ! has_moto "$python"; then
  echo "s3-server: installing moto[server] from PyPI"
  # Into the interpreter's own packages, or, where those are managed by the system (PEP 668),
  # into a virtual environment beside the build.
  venv="${CARGO_TARGET_DIR:-target}/moto-venv"
  if ! "$python" -m pip install --quiet 'moto[server]' >&2; then
    { "$python" -m venv "$venv" && "$venv/bin/python" -m pip install --quiet 'moto[server]'; } >&2 ||
      no_server "pip could not install moto[server]"
    python="$venv/bin/python"
  fi
  has_moto "$python" || no_server "moto[server] was installed but does not import"
fi

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp -t s3-server.XXXXXX.log)
"$python" -m moto.server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
server_pid=$!
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT

export AWS_ENDPOINT_URL="http://127.0.0.1:$port"
export AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=rocketsim
export AWS_SECRET_ACCESS_KEY=rocketsim
export ROCKETSIM_S3_BUCKET=rocketsim-test
unset ROCKETSIM_S3_PREFIX AWS_SESSION_TOKEN AWS_ENDPOINT_URL_S3 AWS_DEFAULT_REGION

# Wait for the server (at most 30 s), then create the bucket (moto takes unsigned requests).
"$python" - <<EOF || { cat "$log" >&2; no_server "the moto server did not start on $AWS_ENDPOINT_URL"; }
import time, urllib.request
deadline = time.time() + 30
while True:
    try:
        urllib.request.urlopen("$AWS_ENDPOINT_URL/", timeout=2)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.2)
request = urllib.request.Request("$AWS_ENDPOINT_URL/$ROCKETSIM_S3_BUCKET", method="PUT")
urllib.request.urlopen(request, timeout=10)
EOF
echo "s3-server: moto $("$python" -c 'import moto; print(moto.__version__)') on $AWS_ENDPOINT_URL, bucket $ROCKETSIM_S3_BUCKET"

unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
# An empty RUSTFLAGS replaces the workspace's `--cfg madsim`: the real build.
cargo_std() {
  local command=$1
  shift
  RUSTFLAGS="" cargo "$command" --release --target-dir "${CARGO_TARGET_DIR:-target}/std" -p engine --features s3 "$@"
}

if [ "$mode" = bench ]; then
  cargo_std run --example object_store_bench -- "${@:2}"
  exit 0
fi

cargo_std test --lib -- io::s3
out=$(mktemp -t s3-tests.XXXXXX.log)
set +e
cargo_std test --test s3_object_store -- --nocapture 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
total=$(sed -n 's/^conformance: \([0-9]*\) sections$/\1/p' "$out" | head -n1)
passed=$(grep -c '^conformance section .*: ok$' "$out" || true)
echo "S3 conformance suite against moto: ${passed}/${total:-?} sections passed"
exit "$status"
