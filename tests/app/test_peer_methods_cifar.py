"""DIST+, SRD, SKD, KDSVD and CTKD (conf/distill/) through kd-train on pair=resnet32x4_resnet8x4: the real
networks and their registry taps, on a small CIFAR-100 written in the real format, a few batches per stage.
(The MNIST-1D default pair runs every conf/distill option in tests/app/test_pipeline.py.)"""
import os

import lightning as L
import pytest
import torch

NEW_METHODS = ["dist_plus", "srd", "skd", "kdsvd", "ctkd"]


@pytest.mark.slow
@pytest.mark.parametrize("method", NEW_METHODS)
def test_method_runs_on_the_cifar_pair_with_no_extra_flags(compose, tmp_path, monkeypatch, method):
    import torchvision.datasets.cifar as tv_cifar

    from data.helpers import write_cifar100
    from kd_lightning.app.build import build_net
    from kd_lightning.app.pipeline import run

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    data_dir = write_cifar100(tmp_path / "data", n_train=32, n_test=8)
    # Only the size of the run is shrunk (data, batches, epochs); the method's settings are its yaml's.
    cfg = compose("pair=resnet32x4_resnet8x4", f"distill={method}", "trainer=cpu", "trainer.precision=32-true",
                  "debug=limit", "trainer.max_epochs=1", "teacher_fit.max_epochs=1", "trainer.limit_train_batches=2",
                  "baseline.enabled=false",
                  f"paths.data_dir={data_dir}", "data=cifar100", "data.batch_size=8", "data.num_workers=0",
                  "trainer.enable_progress_bar=false", "logger=none")
    summary = run(cfg)
    assert summary["distill"]["name"] == method
    assert summary["teacher"]["params"] > summary["student"]["params"]
    # the student was trained: its saved weights left the initialization the pipeline seeded for it
    L.seed_everything(cfg.seed, workers=True)
    init = build_net(cfg.student, "student").state_dict()
    saved = torch.load(summary["student"]["ckpt_path"], map_location="cpu", weights_only=True)["state_dict"]
    moved = [k for k, v in init.items() if v.is_floating_point() and not torch.equal(saved[f"student.{k}"], v)]
    assert any("conv" in k or "fc" in k for k in moved), moved
