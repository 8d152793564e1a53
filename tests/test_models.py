"""Model loading fails fast and clearly: absent devices, hub ids that cannot be fetched."""

from __future__ import annotations

import pytest
import torch

from driftkit.errors import DriftkitError
from driftkit.models import check_hub_reachable, load_model, pick_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_absent_cuda_is_a_user_error(tiny_model) -> None:
    with pytest.raises(DriftkitError, match="no CUDA device"):
        pick_device("cuda")
    with pytest.raises(DriftkitError, match="no CUDA device"):
        load_model(str(tiny_model), device="cuda:1")


def test_unknown_device_string() -> None:
    with pytest.raises(DriftkitError, match="Unknown device"):
        pick_device("tpu-ish")


def test_offline_hub_id_fails_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DriftkitError, match="HF_HUB_OFFLINE is set"):  # decided without any network call
        check_hub_reachable("no-such-org/no-such-model-xyz")


def test_unreachable_hub_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(DriftkitError, match="cannot be reached"):
        check_hub_reachable("no-such-org/no-such-model-xyz", timeout=1.0)
