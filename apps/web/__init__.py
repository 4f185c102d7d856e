"""The web layer shared by the suite's server: middleware (request ids, JSON access logs, rate
limits, body limits, API token) and JSON error answers, structured logging, upload folders, and
ways to run the server for tests and benchmarks. Light to import: fastapi and starlette only.

    from apps.web import install                         # middleware on a FastAPI app, per Settings
    from apps.web.uploads import RequestUploads, request_uploads, safe_filename
    from apps.web.runner import ServerProcess, serve_in_thread, rss_bytes
"""
from .middleware import install

__all__ = ["install"]
