"""Fixtures of the probing tests: the tiny pipelines of probing_ref, one per architecture."""

from __future__ import annotations

import pytest

from probing_ref import KINDS, get_pipe


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def pipe(kind):
    return get_pipe(kind)
