"""An operator-supplied folder of static files (a Web UI build) served under `/ui`.

Routing rule of the reference server's embedded UI (ECOSYSTEM.md 13, HTTP.md 8.1):
`/ui` and `/ui/` serve `index.html`; `/ui/<path>` serves the file if it exists; otherwise a
path whose last segment has no `.` is a client-side route and gets `index.html` (SPA
fallback), and anything else is `404 Not Found`. No authentication: the UI logs in through
the REST API at the root of the same origin. Paths are resolved inside the folder only.
"""

from __future__ import annotations

import mimetypes
import os
from typing import Any

from litestar import Response, get
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import File


def ui_route(directory: str) -> HTTPRouteHandler:
    root = os.path.realpath(directory)
    index = os.path.join(root, "index.html")

    @get(["/ui", "/ui/{path:path}"], opt={"public": True}, include_in_schema=False)
    async def ui(path: FromPath[str] = "/") -> Response[Any]:
        rel = path.lstrip("/")
        target = os.path.realpath(os.path.join(root, rel))
        inside = target == root or target.startswith(root + os.sep)
        if inside and rel and os.path.isfile(target):
            return File(
                target,
                media_type=mimetypes.guess_type(target)[0] or "application/octet-stream",
                content_disposition_type="inline",
            )
        if "." not in rel.rsplit("/", 1)[-1] and os.path.isfile(index):
            return File(index, media_type="text/html", content_disposition_type="inline")
        return Response("Not Found", status_code=404, media_type="text/plain")

    return ui
