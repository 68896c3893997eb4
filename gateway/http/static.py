"""The chat web page: ``GET /`` and its static assets, served from package data.

The page is plain HTML, CSS and ES modules in ``gateway/static`` (no build step, no
CDN). The files are read once when the routes are added, so a request never touches
the file system and a name can only ever resolve to one of the files shipped with the
package: there is no path to traverse.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

#: The page loads only its own scripts, styles and API; nothing inline, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    # Revalidate every time (cheap with the ETag) so a redeploy is seen at once.
    "Cache-Control": "no-cache",
}

_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}

_INDEX = "index.html"


@dataclass(frozen=True, slots=True)
class StaticFile:
    """One shipped file, held in memory."""

    body: bytes
    content_type: str
    etag: str


def load_static_files() -> dict[str, StaticFile]:
    """Read the page's files from the ``gateway/static`` package data."""
    files: dict[str, StaticFile] = {}
    for entry in (resources.files("gateway") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        content_type = _CONTENT_TYPES.get(suffix)
        if content_type is None or not entry.is_file():
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        files[entry.name] = StaticFile(body, content_type, etag)
    if _INDEX not in files:
        raise RuntimeError(f"gateway/static/{_INDEX} is missing from the package")
    return files


def setup_ui(app: web.Application) -> None:
    """Add ``GET /`` (the chat page) and ``GET /static/{name}`` (its assets) to ``app``."""
    files = load_static_files()

    async def index(request: web.Request) -> web.Response:
        return _serve(request, files[_INDEX])

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = files.get(name) if name != _INDEX else None
        if found is None:
            return web.Response(
                status=404, text="Not found", content_type="text/plain", headers=_SECURITY_HEADERS
            )
        return _serve(request, found)

    app.router.add_get("/", index, name="ui_index")
    app.router.add_get("/static/{name}", static, name="ui_static")


def _serve(request: web.Request, file: StaticFile) -> web.Response:
    headers = {**_SECURITY_HEADERS, "ETag": file.etag}
    if file.etag in _if_none_match(request):
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=file.body, content_type=file.content_type, charset="utf-8", headers=headers
    )


def _if_none_match(request: web.Request) -> set[str]:
    header = request.headers.get("If-None-Match", "")
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
