#!/usr/bin/env bash
# Runs warrant locally on SQLite with deploy/warrant.example.toml, plus the demo
# receiver of the `hooks` provider on 127.0.0.1:9000. Stop both with Ctrl-C.
#
#   deploy/quickstart.sh                # from anywhere
#   deploy/demo/send-github.sh opened   # in another terminal, then labeled, closed
#
# Every secret the example config names gets a demo value unless it is already
# set in the environment. These values are public: never use them for real.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

export WARRANT_GITHUB_SECRET="${WARRANT_GITHUB_SECRET:-demo-github-secret}"
export WARRANT_JIRA_SECRET="${WARRANT_JIRA_SECRET:-demo-jira-secret}"
# Standard Webhooks secrets: whsec_ + base64 of at least 16 bytes.
export WARRANT_SERVICENOW_SECRET="${WARRANT_SERVICENOW_SECRET:-whsec_d2FycmFudC1kZW1vLXNlcnZpY2Vub3cta2V5}"
export WARRANT_HOOKS_SECRET="${WARRANT_HOOKS_SECRET:-whsec_d2FycmFudC1kZW1vLWhvb2tzLXNpZ25pbmcta2V5}"
# [keys]: seals the token provider's generated signing key (32 bytes, base64).
export WARRANT_KEYS_SECRET="${WARRANT_KEYS_SECRET:-ZGVtby1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM=}"
# Only used by grants to prod-db/*; no PostgreSQL is needed for the hooks demo.
export PROD_DB_URL="${PROD_DB_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

receiver_pid=""
cleanup() {
    if [[ -n "$receiver_pid" ]] && kill -0 "$receiver_pid" 2>/dev/null; then
        kill "$receiver_pid" 2>/dev/null || true
        wait "$receiver_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

python3 deploy/demo/receiver.py &
receiver_pid=$!

cat <<MSG
warrant demo: API on http://127.0.0.1:8080, demo receiver on http://127.0.0.1:9000
  try:  deploy/demo/send-github.sh opened 42
        deploy/demo/send-github.sh labeled 42
        curl -s -H 'Authorization: Bearer demo-admin-token' http://127.0.0.1:8080/v1/grants
        deploy/demo/send-github.sh closed 42
MSG

cargo run --release -- serve --config deploy/warrant.example.toml
