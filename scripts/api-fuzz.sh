#!/usr/bin/env bash
# Schema-driven check of Vireo's API: schemathesis (PyPI) generates requests from
# docs/api/vireo-api.json and sends them to a `vireo --api-sock` through a small
# TCP-to-Unix-socket forwarder; it fails on any 5xx, a status code the document does not
# list, or a response that does not match its schema. No VM is started (InstanceStart
# without a kernel is refused), so this needs no KVM. vireo runs in a scratch directory;
# PUT /logger and PUT /metrics are left out, since they create the files they are given
# (random paths here); tests/api.rs covers both.
#
# Usage: scripts/api-fuzz.sh [MAX_EXAMPLES]   (default 30 per operation)
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_EXAMPLES="${1:-30}"
VENV="${VIREO_FUZZ_VENV:-$HOME/.cache/vireo/schemathesis-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"

if [ ! -x "$VENV/bin/st" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet schemathesis
fi
cargo build --quiet -p vireo
VIREO="$CARGO_TARGET_DIR/debug/vireo"

WORK="$(mktemp -d)"
SOCK="$WORK/api.sock"
cleanup() {
    [ -n "${FWD_PID:-}" ] && kill "$FWD_PID" 2>/dev/null || true
    [ -n "${VIREO_PID:-}" ] && kill "$VIREO_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

VIREO="$(realpath "$VIREO")"
DOC="$(realpath docs/api/vireo-api.json)"
(cd "$WORK" && exec "$VIREO" --api-sock "$SOCK" >"$WORK/vireo.out" 2>"$WORK/vireo.err") &
VIREO_PID=$!

# TCP 127.0.0.1:PORT -> the Unix socket, one thread per connection.
cat >"$WORK/forward.py" <<'PY'
import socket, sys, threading
sock_path = sys.argv[1]
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
def pipe(a, b):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
while True:
    client, _ = srv.accept()
    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    up.connect(sock_path)
    threading.Thread(target=pipe, args=(client, up), daemon=True).start()
    threading.Thread(target=pipe, args=(up, client), daemon=True).start()
PY
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
python3 "$WORK/forward.py" "$SOCK" >"$WORK/port" &
FWD_PID=$!
for _ in $(seq 100); do [ -s "$WORK/port" ] && break; sleep 0.05; done
PORT="$(cat "$WORK/port")"

cd "$WORK"
set +e
"$VENV/bin/st" run "$DOC" \
    --exclude-path /logger --exclude-path /metrics \
    --url "http://127.0.0.1:$PORT" \
    --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --workers 1 \
    --no-color
STATUS=$?
set -e
if ! kill -0 "$VIREO_PID" 2>/dev/null; then
    echo "api-fuzz: vireo died during the run" >&2
    cat "$WORK/vireo.err" >&2
    exit 1
fi
exit $STATUS
