"""Helpers for the test suite and the benchmarks: a local S3 server (moto) that stands in for an object store.

``moto`` is a test dependency (``pip install -e ".[test]"``); nothing in the package imports this module.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

__all__ = ["free_port", "s3_server", "S3_KEY"]

S3_KEY = "test"  # moto accepts any key; the tests and benchmarks pass this one as both key and secret


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline:
                raise RuntimeError(f"moto S3 server on port {port} did not start within {timeout:.0f} s") from None
            time.sleep(0.2)


@contextlib.contextmanager
def s3_server(*buckets: str, process: bool = False) -> Iterator[str]:
    """Serve S3 on 127.0.0.1 with ``buckets`` created; yields the endpoint URL.

    ``process=True`` runs the server in its own interpreter, as a real object store is (its CPU time is then
    not this process's); otherwise it runs in a thread of this process.
    """
    import boto3

    port = free_port()
    if process:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = server.terminate
    else:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        stop = server.stop
    try:
        _wait_for(port, 60)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEY, aws_secret_access_key=S3_KEY,
                              region_name="us-east-1")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        stop()
        if process:
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
