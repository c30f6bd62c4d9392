"""JOC's web view for operators: server-rendered pages (Jinja2) made live by one small script of
our own with server-sent events, and JSON endpoints behind them, served by JOC itself on
`--http-listen` (HTTPS with JOC's certificates), in JOC's event loop.

server.py: the server, TLS, errors, live streams; access.py: who is calling (tokens, client
certificates, roles as on gRPC); pages.py: pages, JSON, actions; present.py and graph.py: pure
wording and layout; templates/ and static/ are package data.
"""

from joc_svc.web.server import Services, WebView

__all__ = ["Services", "WebView"]
