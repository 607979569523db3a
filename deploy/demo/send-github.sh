#!/usr/bin/env bash
# Sends a signed demo GitHub `issues` webhook to a running warrant.
#
#   deploy/demo/send-github.sh opened|labeled|closed [ISSUE_NUMBER]
#
# The issue: acme/access-requests#N (default 42), opened by dave-gh, asking for
# hooks/demo for 30m. `labeled` adds access-approved as alice-gh (an allowed
# approver); `closed` closes it. Run them in that order a second or more apart:
# warrant orders snapshots by the issue's updated_at, which is "now".
#
# Environment: WARRANT_URL (default http://127.0.0.1:8080) and
# WARRANT_GITHUB_SECRET (default demo-github-secret, as in quickstart.sh).
set -euo pipefail

usage() {
    echo "usage: $0 opened|labeled|closed [ISSUE_NUMBER]" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
action="$1"
number="${2:-42}"
[[ "$number" =~ ^[1-9][0-9]{0,8}$ ]] || usage

url="${WARRANT_URL:-http://127.0.0.1:8080}"
secret="${WARRANT_GITHUB_SECRET:-demo-github-secret}"
now="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
delivery="$(cat /proc/sys/kernel/random/uuid)"

repo_owner="acme"
repo_name="access-requests"
repo="$repo_owner/$repo_name"
html="https://github.com/$repo"
api="https://api.github.com/repos/$repo"

user_json() { # login id
    printf '{"login":"%s","id":%s,"node_id":"U_demo%s","type":"User","site_admin":false,"html_url":"https://github.com/%s"}' \
        "$1" "$2" "$2" "$1"
}
dave="$(user_json dave-gh 5000001)"
alice="$(user_json alice-gh 5000002)"
label='{"id":7000001,"node_id":"LA_demo7000001","name":"access-approved","color":"0e8a16","default":false,"description":"Access request approved"}'

state="open"
closed_at="null"
labels="[]"
sender="$dave"
extra=""
case "$action" in
    opened) ;;
    labeled)
        labels="[$label]"
        sender="$alice"
        extra=",\"label\":$label"
        ;;
    closed)
        labels="[$label]"
        state="closed"
        closed_at="\"$now\""
        ;;
    *) usage ;;
esac

# The issue form's body, as GitHub renders it (JSON-escaped newlines).
issue_body='### Resource\n\nhooks/demo\n\n### Duration\n\n30m'

body="$(printf '{"action":"%s","issue":{"url":"%s/issues/%s","repository_url":"%s","html_url":"%s/issues/%s","id":%s,"node_id":"I_demo%s","number":%s,"title":"Access request: hooks/demo for 30m","user":%s,"labels":%s,"state":"%s","locked":false,"assignee":null,"assignees":[],"milestone":null,"comments":0,"created_at":"%s","updated_at":"%s","closed_at":%s,"author_association":"MEMBER","body":"%s"}%s,"repository":{"id":6000001,"node_id":"R_demo6000001","name":"%s","full_name":"%s","private":true,"owner":{"login":"%s","id":4000001,"type":"Organization"},"html_url":"%s","default_branch":"main"},"organization":{"login":"%s","id":4000001},"sender":%s}' \
    "$action" "$api" "$number" "$api" "$html" "$number" "$((8000000 + number))" "$number" "$number" \
    "$dave" "$labels" "$state" "$now" "$now" "$closed_at" "$issue_body" "$extra" \
    "$repo_name" "$repo" "$repo_owner" "$html" "$repo_owner" "$sender")"

signature="$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" | awk '{print $NF}')"

echo "POST $url/webhooks/github  issues.$action  $repo#$number  delivery $delivery" >&2
printf '%s' "$body" | curl -sS -X POST "$url/webhooks/github" \
    -H 'Content-Type: application/json' \
    -H 'User-Agent: GitHub-Hookshot/demo' \
    -H 'X-GitHub-Event: issues' \
    -H "X-GitHub-Delivery: $delivery" \
    -H "X-Hub-Signature-256: sha256=$signature" \
    --data-binary @- \
    -w '\nHTTP %{http_code}\n'
