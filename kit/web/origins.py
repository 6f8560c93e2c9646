"""Cross-origin policy: same-origin only, unless the app lists the origins that may call it."""

from __future__ import annotations

from collections.abc import Iterable

from flask import Request, Response, jsonify


class OriginPolicy:
    """Refuse chat calls from pages on other origins unless listed; answer CORS preflights for listed ones.

    Browsers already block a cross-origin JSON POST without CORS headers, but a form-encoded POST is
    sent without a preflight; refusing foreign origins on the server closes that gap too.
    """

    def __init__(self, allowed: Iterable[str]) -> None:
        self.allowed = frozenset(origin.rstrip("/") for origin in allowed)
        if "*" in self.allowed:
            raise ValueError("list the origins that may call the kit; '*' would let any page use your model")

    def _is_own(self, request: Request, origin: str) -> bool:
        # Browsers set Sec-Fetch-Site themselves (pages cannot forge it) and it survives proxies that
        # rewrite Host; the Host comparison covers clients that do not send it.
        if request.headers.get("Sec-Fetch-Site") == "same-origin":
            return True
        hosts = {request.host, request.headers.get("X-Forwarded-Host", "")}
        return origin.split("://", 1)[-1] in hosts

    def check(self, request: Request) -> Response | None:
        """None when the request may go on; otherwise the response that refuses it."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None  # not sent by a browser page, or a top-level navigation
        if not (self._is_own(request, origin) or origin in self.allowed):
            return _refuse(origin)
        if request.method == "OPTIONS":
            return Response(status=204)
        return None

    def add_cors_headers(self, request: Request, response: Response) -> None:
        origin = request.headers.get("Origin")
        if origin in self.allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, X-Kit-Stream-Id, X-Kit-Thread-Id"
            response.headers["Vary"] = "Origin"


def _refuse(origin: str) -> Response:
    response = jsonify(error=f"origin {origin} may not call this chat; list it in allowed_origins")
    response.status_code = 403
    return response
