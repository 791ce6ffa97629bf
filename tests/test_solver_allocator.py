"""The glibc allocator tuning: applied once on Linux, and skipped on request."""

import sys

import pytest

from app_extension.solver import allocator


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv("APP_EXTENSION_MALLOC_TUNING", "0")
    assert allocator.tune_cpu_allocator() is False
    assert allocator._done is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_tuning_applies_once(monkeypatch):
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.delenv("APP_EXTENSION_MALLOC_TUNING", raising=False)
    assert allocator.tune_cpu_allocator() is True
    assert allocator._done is True
    assert allocator.tune_cpu_allocator() is True
