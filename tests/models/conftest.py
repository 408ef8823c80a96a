"""The `model` fixture: each tiny architecture with random params."""

import jax
import pytest

from instructjax.models.functional import init_params
from instructjax.testing.models import TINY_MODELS


@pytest.fixture(params=sorted(TINY_MODELS))
def model(request):
    cfg = TINY_MODELS[request.param]
    return cfg, init_params(cfg, jax.random.key(0))
