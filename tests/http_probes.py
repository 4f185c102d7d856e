"""Raw HTTP probes for the hostile-input tests: requests an HTTP client library would not send."""
from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit


def declared_only(url: str, path: str, content_type: str, length: int) -> tuple[int, bytes, dict]:
    """POST headers declaring a `length`-byte body and none of it; (status, the head, the JSON answer): the
    answer comes from the header alone, before any of the body."""
    address = urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        r = conn.getresponse()
        head = "".join(f"{k}: {v}\r\n" for k, v in r.getheaders()).encode()
        return r.status, head, json.loads(r.read())
    finally:
        conn.close()
