#!/usr/bin/env python3
"""A demo receiver for warrant's `http` provider, standard library only.

Listens on 127.0.0.1:9000, verifies the Standard Webhooks signature of each
POST with WARRANT_HOOKS_SECRET (whsec_BASE64), prints the grant or revoke on
one line and answers 204; a missing or bad signature gets 401, a body that is
not JSON 400.

    WARRANT_HOOKS_SECRET=whsec_... python3 deploy/demo/receiver.py [PORT]

A real receiver would also keep the webhook-id of each delivery it applied:
warrant retries until it gets a 2xx, with the same id for the same grant and
action, so a repeat must change nothing.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The same demo value as deploy/quickstart.sh, for running this file alone.
DEMO_SECRET = "whsec_d2FycmFudC1kZW1vLWhvb2tzLXNpZ25pbmcta2V5"
TOLERANCE_SECONDS = 300
MAX_BODY = 1 << 20


def secret_key(secret):
    if not secret.startswith("whsec_"):
        raise ValueError("WARRANT_HOOKS_SECRET must start with whsec_")
    try:
        key = base64.b64decode(secret[len("whsec_"):], validate=True)
    except binascii.Error as e:
        raise ValueError("the part after whsec_ is not base64") from e
    if len(key) < 16:
        raise ValueError("the secret is shorter than 16 bytes")
    return key


def verify(key, msg_id, timestamp, body, signature_header):
    """True when one of the space-separated `v1,BASE64` signatures matches."""
    if not msg_id or not timestamp or not signature_header:
        return False
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - ts) > TOLERANCE_SECONDS:
        return False
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for part in signature_header.split():
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return True
    return False


class Handler(BaseHTTPRequestHandler):
    server_version = "warrant-demo-receiver"
    key = b""

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            return self.answer(413 if length > MAX_BODY else 400)
        body = self.rfile.read(length)
        ok = verify(
            self.key,
            self.headers.get("webhook-id", ""),
            self.headers.get("webhook-timestamp", ""),
            body,
            self.headers.get("webhook-signature", ""),
        )
        if not ok:
            print(f"REJECTED {self.path}: missing or bad signature", flush=True)
            return self.answer(401)
        try:
            event = json.loads(body)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except ValueError:
            print(f"REJECTED {self.path}: body is not a JSON object", flush=True)
            return self.answer(400)
        fields = ("subject", "account", "resource", "ticket", "expires_at")
        line = " ".join(f"{f}={event.get(f)}" for f in fields)
        action = str(event.get("action", "?")).upper()
        print(f"{action:<6} {line} id={self.headers.get('webhook-id')}", flush=True)
        self.answer(204)

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format, *args):
        # One line per delivery is printed above; skip the access log.
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    secret = os.environ.get("WARRANT_HOOKS_SECRET", "").strip() or DEMO_SECRET
    try:
        Handler.key = secret_key(secret)
    except ValueError as e:
        sys.exit(f"receiver: {e}")
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"demo receiver listening on http://127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
