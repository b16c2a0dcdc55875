"""A webhook receiver that logs what Alertmanager sends it, so pages are seen arriving.

docker-compose.yml runs it as the `alert-receiver` service, the target of both receivers of
deploy/alertmanager/alertmanager.yml (`/pager` and `/chat`). Each alert of each notification
becomes one JSON line on stdout (`docker compose logs -f alert-receiver`):

    {"alertname": "CanaryHardStop", "channel": "pager", "labels": {...}, "status": "firing", ...}

`GET /-/healthy` answers 200 for the healthcheck. Standard library only: it runs in the plain
Python image. Stand-in for a real pager or chat bridge; it stores nothing.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1 << 20  # Alertmanager's notifications are a few kB; refuse anything far larger
# Notifications arrive on concurrent threads: one writer at a time keeps each line whole.
_STDOUT = threading.Lock()


def notification_lines(channel: str, payload: Any) -> list[str]:
    """One JSON line per alert of an Alertmanager webhook payload (version 4)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("alerts"), list):
        raise ValueError(f"expected a webhook payload with an 'alerts' list, got {payload!r:.200}")
    lines = []
    for alert in payload["alerts"]:
        if not isinstance(alert, dict):
            raise ValueError(f"expected each alert to be an object, got {alert!r:.200}")
        labels = alert.get("labels", {})
        lines.append(json.dumps({
            "channel": channel,
            "receiver": payload.get("receiver"),
            "status": alert.get("status"),
            "alertname": labels.get("alertname"),
            "labels": labels,
            "summary": alert.get("annotations", {}).get("summary"),
            "starts_at": alert.get("startsAt"),
        }, sort_keys=True))
    return lines


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/-/healthy":
            self._reply(200, "ok\n")
        else:
            self._reply(404, "POST Alertmanager webhooks to /<channel>; GET /-/healthy\n")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._reply(413, f"body of {length} bytes; at most {MAX_BODY}\n")
            return
        channel = self.path.strip("/") or "default"
        try:
            lines = notification_lines(channel, json.loads(self.rfile.read(length)))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            with _STDOUT:
                print(json.dumps({"channel": channel, "error": str(exc)}), file=sys.stderr, flush=True)
            self._reply(400, f"{exc}\n")
            return
        with _STDOUT:
            sys.stdout.write("".join(f"{line}\n" for line in lines))
            sys.stdout.flush()
        self._reply(200, "ok\n")

    def _reply(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the healthcheck's GETs would bury the notifications


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9095)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    # As a container's PID 1 it gets no default SIGTERM handling: stop promptly on `docker stop`.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(json.dumps({"listening": f"{args.host}:{args.port}"}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
