"""The REST API (HTTP.md): a Litestar app served by uvicorn in its own thread and loop.

Modules: `server` (thread + uvicorn lifecycle), `app` (assembly), `routes/*` (handlers by
area), `bridge` (calls into the control plane on the main loop), `context` (auth guard and
shared state), `auth` (JWT), `schemas` (request bodies), `views` (response shapes),
`messages_json` (message bodies and user headers), `errors` (status mapping), `metrics`,
`diagnostics`, `webui`, `settings`.
"""

from iggy.http.server import HttpServer
from iggy.http.settings import from_config

__all__ = ["HttpServer", "from_config"]
