"""A real S3 API for the tests: moto's server on a free 127.0.0.1 port, with one bucket.

`s3` (module-scoped) yields (endpoint, boto3 client); `ds_args` gives a dataset the
`credentials` / `fs_args` a catalog entry would. s3fs, boto3 and moto are in the `test`
extra: missing, they are an error, never a skip.
"""

import logging
import socket

import pytest

BUCKET = "sae-test"
CREDENTIALS = {"key": "testing", "secret": "testing"}  # moto accepts any keys unless auth is on


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free loopback port with one bucket; yields (endpoint, boto3 client).
    The AWS variables point nowhere real, so no request, credential or metadata lookup can
    leave the machine."""
    import boto3
    import moto.server as moto_server
    import s3fs  # noqa: F401  (the backend the datasets use)

    with pytest.MonkeyPatch.context() as env:
        for name in (
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.setenv("no_proxy", "127.0.0.1,localhost")
        werkzeug, level = logging.getLogger("werkzeug"), logging.getLogger("werkzeug").level
        werkzeug.setLevel(logging.WARNING)  # it logs one INFO line per request

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            yield endpoint, client
        finally:
            server.stop()
            werkzeug.setLevel(level)


@pytest.fixture
def ds_args(s3):
    """credentials / fs_args as a catalog entry gives them (kedro-datasets style)."""
    return {"credentials": dict(CREDENTIALS), "fs_args": {"client_kwargs": {"endpoint_url": s3[0]}}}


def s3_files(client, prefix):
    """{key relative to prefix: bytes} of every object under prefix, as S3 itself lists them."""
    out = {}
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    for page in pages:
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read()
            out[obj["Key"][len(prefix) + 1 :]] = body
    return out
