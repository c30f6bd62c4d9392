# Shared by the scripts here: how to reach JOC with mutual TLS through `buf curl`.
#   OSTINATO_JOC      JOC's HOST:PORT (default 127.0.0.1:4446, where `ostinato up` puts it)
#   OSTINATO_TLS_DIR  a directory with ca.pem, cli.pem and cli.key (default .ostinato/pki)
#   BUF               the buf binary (default: the repository's node_modules/.bin/buf, else buf)
set -euo pipefail

JOC=${OSTINATO_JOC:-127.0.0.1:4446}
TLS_DIR=${OSTINATO_TLS_DIR:-.ostinato/pki}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUF=${BUF:-$HERE/../../node_modules/.bin/buf}
[ -x "$BUF" ] || BUF=buf

# call SERVICE/METHOD [buf curl options...]: the request as JSON on stdin, the answers (one JSON
# document per message of a stream) on stdout. A refused call prints "CODE: message" on stderr
# (with the field that was wrong, from its google.rpc details) and exits 1.
call() {
  local method=$1 out status
  shift
  out=$(mktemp)
  status=0
  "$BUF" curl --protocol grpc --cacert "$TLS_DIR/ca.pem" --cert "$TLS_DIR/cli.pem" --key "$TLS_DIR/cli.key" \
    "$@" -d @- "https://$JOC/ostinato.joc.v1.$method" 2>"$out" || status=$?
  if [ "$status" -ne 0 ]; then
    jq -r '"\(.code | ascii_upcase): \(.message)"' <"$out" >&2 2>/dev/null || cat "$out" >&2
    rm -f "$out"
    exit 1
  fi
  rm -f "$out"
}
