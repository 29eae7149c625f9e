"""A scriptable OpenAI-compatible chat-completions server for tests (stdlib http.server on
127.0.0.1:0 in a thread): records every request and answers per ``[case:NAME]`` tag."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CASE = re.compile(r"\[case:([\w-]+)\]")


class FakeEndpoint:
    """A chat-completions endpoint.  ``script[case]`` is a list of actions consumed one
    per request for that case (the last one repeats), the case being the ``[case:NAME]``
    tag in the request's user text:
    ("ok", content) | ("cut", content) (finish_reason length) | ("status", code, headers,
    body) | ("slow", seconds, content)."""

    def __init__(self, default: str = "") -> None:
        self.default = default
        self.script: dict[str, list[tuple]] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                # every non-system turn (a guard request has a user and an assistant turn)
                user_text = "".join(
                    m["content"]
                    if isinstance(m["content"], str)
                    else "".join(p.get("text", "") for p in m["content"] if p["type"] == "text")
                    for m in body["messages"]
                    if m["role"] != "system"
                )
                tag = CASE.search(user_text)
                case = tag.group(1) if tag else "default"
                with outer.lock:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    outer.requests.append(
                        {
                            "path": self.path,
                            "headers": headers,
                            "body": body,
                            "case": case,
                            "user_text": user_text,
                        }
                    )
                    actions = outer.script.get(case) or [("ok", outer.default)]
                    action = actions.pop(0) if len(actions) > 1 else actions[0]
                # the client may have given up already (timeout test)
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(action)

            def _answer(self, action):
                if action[0] == "slow":
                    time.sleep(action[1])
                    action = ("ok", action[2])
                if action[0] in ("ok", "cut"):
                    code, headers = 200, {"Content-Type": "application/json"}
                    reason = "stop" if action[0] == "ok" else "length"
                    data = json.dumps(
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": reason,
                                    "message": {"role": "assistant", "content": action[1]},
                                }
                            ],
                            "usage": {
                                "prompt_tokens": 11,
                                "completion_tokens": 7,
                                "total_tokens": 18,
                            },
                        }
                    )
                else:
                    _, code, headers, data = action
                raw = data.encode()
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def calls(self, case: str) -> int:
        return sum(1 for r in self.requests if r["case"] == case)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
