"""torchvision / timm models by name. The network is blocked in every test here: a request for
pretrained weights must end in the one clear RuntimeError, quickly."""
import socket

import pytest
import torch

from kd_lightning.models.hub import timm_model, torchvision_model


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No sockets, and empty weight caches."""
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_torchvision_by_name_with_other_class_count():
    net = torchvision_model("resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_torchvision_unknown_name_lists_close_ones():
    with pytest.raises(ValueError, match="resnet18"):
        torchvision_model("resnet81")


def test_torchvision_unknown_weights_name():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        torchvision_model("resnet18", weights="CIFAR_SOMETHING")


def test_torchvision_weights_offline_give_one_clear_error(monkeypatch):
    import torch.hub
    from urllib.error import URLError

    def no_download(url, dst, *args, **kwargs):
        raise URLError("no route to host (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    with pytest.raises(RuntimeError) as err:
        torchvision_model("resnet18", weights="DEFAULT", num_classes=10)
    message = str(err.value)
    assert "could not be downloaded" in message
    assert "TORCH_HOME" in message and "weights=null" in message
    assert "resnet18" in message


def test_torchvision_pretrained_head_is_replaced(monkeypatch):
    from torchvision.models import resnet18
    from torchvision.models._api import WeightsEnum

    reference = resnet18(num_classes=1000).state_dict()  # stands in for the downloaded ImageNet weights
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: reference)
    net = torchvision_model("resnet18", weights="IMAGENET1K_V1", num_classes=10)
    assert net.fc.out_features == 10
    assert torch.equal(net.conv1.weight, reference["conv1.weight"])
    same = torchvision_model("resnet18", weights="DEFAULT", num_classes=1000)
    assert torch.equal(same.fc.weight, reference["fc.weight"])


def test_timm_by_name():
    net = timm_model("resnet10t", num_classes=7).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_timm_unknown_name_lists_close_ones():
    with pytest.raises(ValueError, match="resnet10t"):
        timm_model("resnet10tt")


def test_timm_pretrained_offline_give_one_clear_error(monkeypatch):
    import timm.models._builder as builder

    def no_download(*args, **kwargs):
        raise OSError("offline (test)")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", no_download)
    monkeypatch.setattr(builder, "load_state_dict_from_url", no_download)
    with pytest.raises(RuntimeError) as err:
        timm_model("resnet10t", pretrained=True, num_classes=10)
    message = str(err.value)
    assert "could not be downloaded" in message and "pretrained=false" in message and "HF_HOME" in message


def test_timm_offline_error_comes_at_once_without_hf_hub_offline(monkeypatch):
    # The Hugging Face client would retry with back-off for minutes; the pre-check fails at once.
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE")
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="cannot be reached"):
        timm_model("resnet10t", pretrained=True)
    assert time.perf_counter() - start < 5
