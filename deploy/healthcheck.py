"""Container healthchecks for the Axon image (``/opt/axon/healthcheck.py``).

    python /opt/axon/healthcheck.py /healthz     # the API: GET http://127.0.0.1:$AXON_API_PORT/healthz
    python /opt/axon/healthcheck.py URL          # GET any URL (a metrics endpoint, /readyz)
    python /opt/axon/healthcheck.py --redis      # PING the Redis at REDIS_URL (worker, compactor)

Healthy is an HTTP 2xx answer, or PONG, within ``--timeout`` seconds (default
2). Exit status follows Docker's HEALTHCHECK convention: 0 healthy, 1
unhealthy, with one line on stdout saying why (``docker inspect`` shows it).
Uses only the standard library, plus redis-py for ``--redis``.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence


def check_http(target: str, *, timeout: float) -> str:
    """GET ``target`` (a URL, or a path on the local API port); the status line.

    Raises:
        OSError: no answer, or an answer that is not 2xx.
    """
    url = target
    if target.startswith("/"):
        port = os.environ.get("AXON_API_PORT") or "8000"
        url = f"http://127.0.0.1:{port}{target}"
    if not url.startswith(("http://", "https://")):
        raise OSError(f"not an http(s) URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (checked above)
        status = int(response.status)
    if not 200 <= status < 300:
        raise OSError(f"{url} answered {status}")
    return f"{url} answered {status}"


def check_redis(*, timeout: float) -> str:
    """PING the Redis at ``REDIS_URL``; what it answered.

    Raises:
        OSError: REDIS_URL is unset, or the server did not answer in time.
    """
    url = os.environ.get("REDIS_URL")
    if not url:
        raise OSError("REDIS_URL is not set")
    import redis  # only this check needs it; it is an Axon dependency

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise OSError(f"Redis did not answer PING: {exc}") from None
    finally:
        client.close()
    return "Redis answered PONG"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one check; 0 healthy, 1 unhealthy."""
    parser = argparse.ArgumentParser(prog="healthcheck.py", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("url", nargs="?", help="a URL, or a path on the local API port")
    target.add_argument("--redis", action="store_true", help="PING the Redis at REDIS_URL")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = parser.parse_args(argv)
    try:
        if args.redis:
            message = check_redis(timeout=args.timeout)
        else:
            message = check_http(args.url, timeout=args.timeout)
    except (OSError, ValueError) as exc:  # urllib's URLError and HTTPError are OSErrors
        print(f"unhealthy: {exc}", flush=True)
        return 1
    print(f"healthy: {message}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
