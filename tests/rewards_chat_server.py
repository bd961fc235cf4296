"""Test support: a small OpenAI-compatible chat-completions server on 127.0.0.1, run as a subprocess.

`python rewards_chat_server.py` prints its port, then serves until killed. The request's "model" picks
the behaviour:
  echo    answer the text inside the last "[judge says: ...]" of the last message, else "Score: 3"
  slow    echo after sleeping 1 s
  flaky   503 the first two times a request body is seen, then echo
  broken  always 500
  denied  always 401
  garbage 200 with a body that is not JSON
GET /stats returns {"posts": n, "max_in_flight": m, "authorization": last Authorization header}.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_stats = {"posts": 0, "in_flight": 0, "max_in_flight": 0, "authorization": None}
_seen: dict[str, int] = {}


def _echo(body: dict) -> str:
    said = re.findall(r"\[judge says: (.*?)\]", body["messages"][-1]["content"], re.DOTALL)
    return said[-1] if said else "Score: 3"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output quiet
        pass

    def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        with _lock:
            self._send(200, json.dumps({k: v for k, v in _stats.items() if k != "in_flight"}).encode())

    def do_POST(self):
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        body = json.loads(raw)
        with _lock:
            _stats["posts"] += 1
            _stats["in_flight"] += 1
            _stats["max_in_flight"] = max(_stats["max_in_flight"], _stats["in_flight"])
            _stats["authorization"] = self.headers.get("Authorization")
            _seen[raw.decode()] = seen = _seen.get(raw.decode(), 0) + 1
        try:
            self._answer(body, seen)
        finally:
            with _lock:
                _stats["in_flight"] -= 1

    def _answer(self, body: dict, seen: int) -> None:
        mode = body["model"]
        if mode == "slow":
            time.sleep(1.0)
        if mode == "broken" or (mode == "flaky" and seen <= 2):
            return self._send(503 if mode == "flaky" else 500, b'{"error": "unavailable"}')
        if mode == "denied":
            return self._send(401, b'{"error": "bad key"}')
        if mode == "garbage":
            return self._send(200, b"<html>not json</html>", "text/html")
        message = {"role": "assistant", "content": _echo(body)}
        reply = {"object": "chat.completion", "choices": [{"index": 0, "message": message}]}
        self._send(200, json.dumps(reply).encode())


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()
