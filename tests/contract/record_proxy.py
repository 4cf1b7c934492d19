#!/usr/bin/env python3
"""Recording HTTP/1.1 proxy for contract tests (standard library only).

Point an AWS client's endpoint at this proxy; it forwards every request unchanged to the
upstream (moto_server) and appends one JSON object per request to the recording:

    {"method": "POST", "target": "/path?query", "headers": {"x-amz-target": ...},
     "body_b64": "<base64 of the raw request body>", "status": <response status>}

Header names are lowercased; the body is exactly what the client sent (aws-chunked framing
included), unless --max-body leaves a large PUT body out (then "body_b64" is "" and
"body_omitted" is its length). "status" is the upstream's response status (502: upstream
unreachable). Each line is written and flushed before the response is relayed to the client,
so a test that stops the proxy right after its last call has a complete recording.

Usage:
    record_proxy.py --upstream http://127.0.0.1:5000 --out rec.jsonl [--listen 127.0.0.1:0] [--max-body BYTES]

Prints `listening on http://HOST:PORT` on stdout (one line, flushed) once it accepts requests.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import json
import sys
import threading
import urllib.parse

# Hop-by-hop headers (RFC 9110 7.6.1) are the proxy's own business, not the upstream's.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"}


class Recorder:
    def __init__(self, path: str):
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self.lock:
            self.file.write(line)
            self.file.flush()


def make_handler(upstream: urllib.parse.SplitResult, recorder: Recorder, max_body: int | None = None):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # quiet: the recording is the log
            pass

        def handle(self):
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client hung up (a cancelled download): nothing to relay

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _proxy(self):
            body = self._read_body()
            target = self.path
            if target.startswith(("http://", "https://")):
                u = urllib.parse.urlsplit(target)
                target = u.path + ("?" + u.query if u.query else "")
            headers = {k.lower(): v for k, v in self.headers.items()}
            rec = {"method": self.command, "target": target, "headers": headers}
            if max_body is not None and len(body) > max_body and self.command == "PUT" and "aws-chunked" not in headers.get("content-encoding", ""):
                # Object bytes (PutObject/UploadPart): check.py needs only their length.
                rec.update(body_b64="", body_omitted=len(body))
            else:
                rec["body_b64"] = base64.b64encode(body).decode("ascii")
            fwd = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            if body or self.command in ("POST", "PUT", "PATCH"):
                fwd["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port or 80, timeout=300)
            try:
                conn.request(self.command, target, body=body, headers=fwd)
                resp = conn.getresponse()
                data = resp.read()
            except OSError as e:
                rec["status"] = 502
                recorder.write(rec)
                msg = f"record_proxy: upstream failed: {e}\n".encode()
                self.send_response(502)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            finally:
                conn.close()
            rec["status"] = resp.status
            recorder.write(rec)
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _proxy

    return Handler


def serve(upstream: str, out: str, listen: str = "127.0.0.1:0", max_body: int | None = None):
    """Starts the proxy in a background thread; returns (server, "http://host:port")."""
    host, _, port = listen.rpartition(":")
    handler = make_handler(urllib.parse.urlsplit(upstream), Recorder(out), max_body)
    server = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{h}:{p}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:5000")
    ap.add_argument("--out", required=True, help="JSON Lines file to append to")
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    ap.add_argument(
        "--max-body",
        type=int,
        metavar="BYTES",
        help="record PUT bodies longer than this (object bytes) as {\"body_b64\": \"\", \"body_omitted\": <length>}; aws-chunked bodies are always kept (their trailer has the checksum)",
    )
    args = ap.parse_args()
    server, url = serve(args.upstream, args.out, args.listen, args.max_body)
    print(f"listening on {url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
