"""A container's health probe (the images' HEALTHCHECK and the compose file's healthchecks).

    python -m deploy.healthcheck tcp HOST PORT
    python -m deploy.healthcheck http HOST PORT PATH
    python -m deploy.healthcheck https HOST PORT PATH CA_FILE
    python -m deploy.healthcheck env          # the probe in $PAROMA_HEALTHCHECK, same words

Exit 0 when the service answers (an HTTP status below 500, over TLS verified against the
federation CA), 1 otherwise, with the reason on stderr. Standard library only: the images
have no curl.
"""

from __future__ import annotations

import http.client
import os
import shlex
import socket
import ssl
import sys

TIMEOUT_S = 5.0


def probe(words: list[str]) -> str | None:
    """None when healthy, else why not."""
    if not words or words[0] not in ("tcp", "http", "https"):
        return f"expected tcp|http|https HOST PORT [PATH [CA]], got {' '.join(words)!r}"
    kind, rest = words[0], words[1:]
    need = {"tcp": 2, "http": 3, "https": 4}[kind]
    if len(rest) != need:
        return f"{kind} needs {need} arguments, got {len(rest)}"
    host, port_text = rest[0], rest[1]
    try:
        port = int(port_text)
    except ValueError:
        return f"port {port_text!r} is not a number"
    try:
        if kind == "tcp":
            socket.create_connection((host, port), timeout=TIMEOUT_S).close()
            return None
        if kind == "http":
            conn: http.client.HTTPConnection = http.client.HTTPConnection(host, port, timeout=TIMEOUT_S)
        else:
            context = ssl.create_default_context(cafile=rest[3])
            conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT_S, context=context)
        conn.request("GET", rest[2])
        status = conn.getresponse().status
        conn.close()
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return f"{kind}://{host}:{port}: {exc}"
    return None if status < 500 else f"{kind}://{host}:{port}{rest[2]} answered {status}"


def main(argv: list[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    if words == ["env"]:
        words = shlex.split(os.environ.get("PAROMA_HEALTHCHECK", ""))
        if not words:
            print("PAROMA_HEALTHCHECK is not set: nothing to probe", file=sys.stderr)
            return 0
    reason = probe(words)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
