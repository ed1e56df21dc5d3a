"""A real S3-compatible server for the tests: moto's (PyPI ``moto[server]``).

:func:`moto_s3` starts ``python -m moto.server`` on a free loopback port, waits for it by
polling, creates an IAM user with one access key allowed everything, then turns moto's
authentication on (``/moto-api/reset-auth``): from then on a request signed with another
key or secret is refused with 403, as S3 refuses it. The ``s3_server`` fixture is one such
server for the whole test session; use it with
``pytest_plugins = ["tests.servers.s3_server"]``. Skips, naming the reason, when moto is
not installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers.pg_server import free_port
from tests.servers.processes import stop

STARTUP_TIMEOUT = 30.0
REGION = "us-east-1"
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3Server:
    """A running server: ``endpoint`` (``host:port``), the one access key it accepts."""

    endpoint: str
    key_id: str
    secret: str
    process: subprocess.Popen
    region: str = REGION

    def client(self) -> Any:
        """A boto3 S3 client signed with the server's key."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.endpoint}",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
            region_name=self.region,
        )

    def new_bucket(self) -> str:
        """A fresh empty bucket's name."""
        name = f"lake-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """The keys of the objects in ``bucket`` under ``prefix``."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _with_authentication(url: str) -> tuple[str, str]:
    """Create the user and its key while moto lets anyone in, then require signatures."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=url,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
        region_name=REGION,
    )
    iam.create_user(UserName="lake")
    iam.put_user_policy(UserName="lake", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
    key = iam.create_access_key(UserName="lake")["AccessKey"]
    request = urllib.request.Request(  # the body: how many more requests go unsigned
        f"{url}/moto-api/reset-auth", data=b"0", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    return key["AccessKeyId"], key["SecretAccessKey"]


@contextmanager
def moto_s3(folder: Path) -> Iterator[S3Server]:
    """Start moto's server (its log in ``folder``); stop it on exit."""
    pytest.importorskip(
        "moto.server", reason="moto's server is not installed: pip install 'moto[server]'"
    )
    for _attempt in range(3):  # a port taken between probe and bind: try another
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = (folder / f"moto-{port}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline and not _ready(url):
            time.sleep(0.05)  # a polling interval, not a wait for readiness
        if process.poll() is None and _ready(url):
            break
        stop(process)
        log.close()
    else:
        raise RuntimeError(f"moto's server did not start; see {folder}/moto-*.log")
    try:
        key_id, secret = _with_authentication(url)
        yield S3Server(f"127.0.0.1:{port}", key_id, secret, process)
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto server for the whole session, authentication on."""
    with moto_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server
