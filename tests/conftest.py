import pytest

from tests.release import SHAPES, write_release
from tests.s3server import start_seaweed


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """A complete GPT-2 release (SHAPES["tiny"]) in OpenAI's layout, written once per session."""
    return write_release(tmp_path_factory.mktemp("release") / "tiny", **SHAPES["tiny"])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1, started once per session (skips without `weed`)."""
    server = start_seaweed(tmp_path_factory.mktemp("s3server"))
    yield server
    server.stop()
