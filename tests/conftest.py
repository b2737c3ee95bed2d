import importlib.util

import pytest

from gpt2hub.testing.release import REAL_FIXTURES, SHAPES, write_release
from tests.s3server import start_seaweed

if importlib.util.find_spec("torch") is not None:
    # torch >= 2.14 loads triton when torch._dynamo is first imported (transformers does), and triton's native
    # library crashes (SIGSEGV) in a process where TensorFlow was loaded first. Tests write releases with
    # TensorFlow and load outputs with transformers in this one process, so triton comes first. gpt2hub
    # itself runs TensorFlow and each consumer in processes of their own (gpt2hub.isolation); the
    # TensorFlow-first order is tested in a fresh process (test_model.py).
    import torch._dynamo  # noqa: F401

pytest_plugins = ["tests.ci", "pytester"]  # tests.ci: in CI a skip is a failure


@pytest.fixture
def real_vocab_folder(tmp_path):
    """A folder `124M` holding OpenAI's real encoder.json and vocab.bpe (all a tiktoken cache needs)."""
    import shutil

    if REAL_FIXTURES is None:  # in CI, tests.ci stops the session before this
        pytest.skip("../shared/fixtures/openai-124M-real absent")
    folder = tmp_path / "124M"
    folder.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(REAL_FIXTURES / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """A complete GPT-2 release (SHAPES["tiny"]) in OpenAI's layout, written once per session."""
    if REAL_FIXTURES is None:  # in CI, tests.ci stops the session before this
        pytest.skip("../shared/fixtures/openai-124M-real absent: tests on the tiny release need GPT-2's real vocabulary")
    return write_release(tmp_path_factory.mktemp("release") / "tiny", **SHAPES["tiny"])


@pytest.fixture(scope="session")
def tiny_converted(tiny_release, tmp_path_factory):
    """tiny_release copied to DIR/original and converted by gpt2hub.convert beside it: DIR/original-safetensors,
    DIR/original-pytorch and DIR/original-{f32,f16,bf16,q8_0}.gguf. Returns DIR/original. Treat as read-only."""
    import shutil

    import gpt2hub

    original = tmp_path_factory.mktemp("converted") / "original"
    shutil.copytree(tiny_release, original)
    for fmt in ("safetensors", "pytorch"):
        gpt2hub.convert(original, to=fmt)
    for dtype in ("f32", "f16", "bf16", "q8_0"):
        gpt2hub.convert(original, to="gguf", dtype=dtype)
    return original


@pytest.fixture(scope="session")
def kept_demo(tmp_path_factory):
    """`gpt2hub demo --keep ~/demo` run once, as README shows it (HOME a session folder README calls /home/me):
    a tests.console.KeptDemo. README's examples run on its store, and change it (rm)."""
    from tests.console import kept_demo

    for package in ("torch", "gguf"):
        if importlib.util.find_spec(package) is None:  # in CI, tests.ci stops the session before this
            pytest.skip(f"the demo needs {package}")
    return kept_demo(tmp_path_factory.mktemp("me"), "/home/me")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1, started once per session (skips without `weed`)."""
    server = start_seaweed(tmp_path_factory.mktemp("s3server"))
    yield server
    server.stop()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The stand-in Hub (tests.hubserver), huggingface_hub pointed at it with its token set, Xet off (the legacy LFS path)."""
    from huggingface_hub import constants

    from tests.hubserver import TOKEN, HubServer

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with HubServer(TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """AWS credentials SeaweedFS (anonymous) accepts, and no real AWS config or profile."""
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-never-printed")  # tests check it is never printed
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
