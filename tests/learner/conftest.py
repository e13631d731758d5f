"""Fixtures of the learner tests."""

import pytest
from tiny_inputs import CORPUS

from cluster.embedded.tiny_model import ensure_tiny_model


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    """A random-init tiny Qwen2.5-VL whose tokenizer is trained on CORPUS (built in seconds)."""
    return ensure_tiny_model(tmp_path_factory.mktemp("models"), CORPUS)
