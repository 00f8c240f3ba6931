"""The chat's HTTP server, standard library only: `GET /` the page, `GET /api/info` the model and the sampler
defaults, `POST /api/chat` ({"messages": [...], "settings": {...}}) the answer as server-sent events (one
`data: {json}` per intermediate canvas, then the answer), which the page reads with `fetch`."""

from __future__ import annotations

import json
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .engine import ChatError, ChatModel, settings_from

PAGE = Path(__file__).with_name("page.html")
MAX_BODY = 1 << 20  # a conversation, not an upload


def read_request(body: bytes) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """The messages and settings of a chat request; `ChatError` says what is wrong with it."""
    try:
        request = json.loads(body or b"{}")
    except json.JSONDecodeError as e:
        raise ChatError(f"the request is not JSON: {e}") from None
    messages = request.get("messages") if isinstance(request, dict) else None
    if not isinstance(messages, list) or not messages:
        raise ChatError('the request needs "messages": a list of {"role", "content"} objects')
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise ChatError('each message needs a "role" (system, user or assistant) and a "content" string')
        if not isinstance(message.get("content"), str):
            raise ChatError('each message needs a "content" string')
    if messages[-1]["role"] != "user":
        raise ChatError("the last message must be the user's")
    settings = request.get("settings") or {}
    if not isinstance(settings, dict):
        raise ChatError('"settings" must be an object')
    return [{"role": m["role"], "content": m["content"]} for m in messages], settings


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        if self.server.verbose:
            super().log_message(format, *args)

    def send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path  # the page reads its query (preset settings) itself
        if path in ("/", "/index.html"):
            body = PAGE.read_bytes()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/favicon.ico":
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
        elif path == "/api/info":
            self.send_json(HTTPStatus.OK, self.server.chat.info())
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no page {path}; the chat is at /"})

    def do_POST(self) -> None:
        if self.path != "/api/chat":
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.path}; POST /api/chat"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"the request is over {MAX_BODY} bytes"})
            return
        try:
            messages, values = read_request(self.rfile.read(length))
            settings = settings_from(values)
            self.server.chat.check(settings)
        except ChatError as e:
            self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.close_connection = True
        try:
            for event in self.server.chat.stream(messages, settings):
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away; the answer finishes unseen


class ChatServer(ThreadingHTTPServer):
    """Serves one `ChatModel`; each request in its own thread (the model answers one at a time)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], chat: ChatModel, verbose: bool = False) -> None:
        super().__init__(address, ChatHandler)
        self.chat, self.verbose = chat, verbose
