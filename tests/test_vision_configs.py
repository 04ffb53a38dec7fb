"""The vision configs compose with conf/train.yaml: every registered model as teacher and student, the
data and optimizer groups, and every table cell (pair x recipe x method) with the published settings."""
import glob
import os

import pytest
from omegaconf import OmegaConf

from kd_lightning.models import list_models, model_entry
from kd_lightning.taps import FeatureTaps

CONF = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "conf"))

MODEL_PRESETS = [n for n in list_models() if model_entry(n).task == "classification"]  # LM presets: tests/app
PAIRS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONF, "pair", "*.yaml")))
METHODS = ("kd", "dkd", "fitnet", "at", "rkd", "crd")
# A quick subset covering every pair and every special case (DKD betas, lr 0.01); the rest runs as slow tests.
QUICK_CELLS = [("resnet32x4_resnet8x4", "kd"), ("resnet56_resnet20", "dkd"), ("wrn_40_2_wrn_16_2", "fitnet"),
               ("vgg13_vgg8", "crd"), ("resnet32x4_ShuffleV2", "dkd"), ("resnet32x4_ShuffleV2", "at")]


@pytest.fixture(scope="module")
def compose_train():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield lambda *overrides: compose("train", overrides=list(overrides))


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_model_preset_composes_as_teacher_and_student(compose_train, preset):
    cfg = compose_train(f"teacher={preset}", f"student={preset}", "data=cifar100")
    assert cfg.teacher == cfg.student  # one description, two roles
    node = cfg.student
    assert node.net.model_name == preset and node.ckpt_path is None
    assert dict(node.taps) == model_entry(preset).taps
    if preset in ("torchvision", "timm"):
        return  # hub models: tested in tests/models (no weights here)
    from hydra.utils import instantiate

    net = instantiate(node.net)
    taps = node.taps
    FeatureTaps(net, [*taps.stages, taps.hint, taps.embedding]).remove()  # every named path exists
    assert taps.hint in taps.stages


def test_torchvision_teacher_from_the_command_line(compose_train):
    cfg = compose_train("teacher=torchvision", "teacher.name=resnet34", "teacher.weights=DEFAULT", "data=imagefolder",
                        "student=timm", "student.name=resnet10t")
    assert cfg.teacher.net.name == "resnet34" and cfg.teacher.net.weights == "DEFAULT"
    assert cfg.teacher.net.num_classes == 1000 and cfg.student.net.pretrained is False
    assert cfg.data.data_dir.endswith("/imagenet") and cfg.data.num_train == 1281167


def test_data_and_optim_groups(compose_train):
    cfg = compose_train("data=cifar10", "optim=sgd_cifar")
    assert cfg.data.name == "cifar10" and cfg.data.num_classes == 10 and cfg.data.num_train == 50000
    assert cfg.data.download is False and cfg.data.return_index is False
    assert set(cfg.optim) == {"optimizer", "scheduler", "scheduler_interval"}
    assert cfg.optim.optimizer.weight_decay == pytest.approx(5e-4)
    import torch
    from hydra.utils import instantiate

    opt = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.optim.scheduler)(opt)
    assert opt.defaults["lr"] == 0.05 and opt.defaults["momentum"] == 0.9
    assert sorted(sched.milestones) == [150, 180, 210]
    imagenet = compose_train("optim=sgd_imagenet").optim
    assert imagenet.optimizer.lr == 0.1 and imagenet.optimizer.weight_decay == pytest.approx(1e-4)
    assert list(imagenet.scheduler.milestones) == [30, 60, 90]


def test_every_pair_names_its_models_and_every_published_cell():
    assert len(PAIRS) == 5
    for pair in PAIRS:
        node = OmegaConf.load(os.path.join(CONF, "pair", f"{pair}.yaml"))
        assert set(node.pair.published) == {"teacher", "student", *METHODS}
        assert node.pair.name == pair


@pytest.mark.parametrize("pair,method", [
    pytest.param(p, m, marks=() if (p, m) in QUICK_CELLS else pytest.mark.slow) for p in PAIRS for m in METHODS])
def test_table_cell_composes_with_the_published_recipe(compose_train, pair, method):
    cfg = compose_train(f"pair={pair}", "recipe=cifar100", f"distill={method}")
    for node in ("data", "teacher", "student", "distill", "optim"):
        OmegaConf.to_container(cfg[node], resolve=True)  # every interpolation resolves
    assert cfg.data.name == "cifar100" and cfg.data.batch_size == 64 and cfg.trainer.max_epochs == 240
    assert list(cfg.optim.scheduler.milestones) == [150, 180, 210] and cfg.trainer.accelerator == "gpu"
    assert f"{cfg.teacher.net.model_name}_{cfg.student.net.model_name}" == pair
    small_lr = cfg.student.net.model_name in ("ShuffleV2", "ShuffleV1", "MobileNetV2")
    assert cfg.distill.name == method and cfg.optim.optimizer.lr == (0.01 if small_lr else 0.05)
    if method == "kd":
        assert (cfg.distill.temperature, cfg.distill.ce_weight, cfg.distill.kd_weight) == (4.0, 0.1, 0.9)
    elif method == "dkd":
        assert cfg.distill.beta == {"resnet56_resnet20": 2.0, "wrn_40_2_wrn_16_2": 6.0, "vgg13_vgg8": 6.0}.get(pair, 8.0)
        assert cfg.distill.alpha == 1.0 and cfg.distill.temperature == 4.0 and cfg.distill.ce_weight == 1.0
    else:  # feature methods as in the RepDistiller commands: CE 1 plus the method's term
        assert (cfg.distill.ce_weight, cfg.distill.kd_weight) == (1.0, 0.0)


def test_feature_methods_keep_kd_outside_the_table_protocol(compose_train):
    cfg = compose_train("distill=at")
    assert (cfg.distill.ce_weight, cfg.distill.kd_weight) == (0.1, 0.9)
    assert compose_train("distill=crd").distill.kd_weight == 1.0 and compose_train("distill=dkd").distill.beta == 8.0


def test_imagenet_experiment_composes(compose_train):
    cfg = compose_train("experiment=imagenet_resnet34_resnet18_kd")
    assert cfg.teacher.name == "resnet34" and cfg.teacher.weights == "DEFAULT" and cfg.student.name == "resnet18"
    assert (cfg.distill.temperature, cfg.distill.ce_weight, cfg.distill.kd_weight) == (1.0, 0.5, 0.5)
    assert cfg.trainer.max_epochs == 100 and cfg.data.batch_size == 256 and cfg.optim.optimizer.lr == 0.1
    assert cfg.teacher_fit.max_epochs == 0 and cfg.baseline.enabled is False  # pretrained teacher, as is


@pytest.mark.slow
def test_cifar_experiment_runs_through_kd_train(compose_train, tmp_path, monkeypatch):
    """pair=resnet56_resnet20 recipe=cifar100 distill=dkd end to end (teacher, baseline, student) on a tiny CIFAR-100
    written in the real format, with the networks swapped for resnet8 and a few batches per stage."""
    import os as _os

    import torchvision.datasets.cifar as tv_cifar
    from omegaconf import open_dict

    from kd_lightning.app.pipeline import run
    from test_vision_data import write_cifar100

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: _os.path.isfile(fpath))
    data_dir = write_cifar100(tmp_path / "data", n_train=48, n_test=16)
    cfg = compose_train(
        "pair=resnet56_resnet20", "recipe=cifar100", "distill=dkd", "teacher=resnet8", "student=resnet8", "trainer=cpu",
        "trainer.precision=32-true", "debug=limit", f"paths.data_dir={data_dir}", "data.batch_size=8",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "logger=none")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.paths.cache_dir = str(tmp_path / "cache")
    summary = run(cfg)
    assert {"teacher", "baseline", "student"} <= set(summary)
    assert summary["distill"]["name"] == "dkd" and summary["student"]["params"] == summary["baseline"]["params"]
    assert (tmp_path / "run" / "summary.json").is_file()


def test_collector_tabulates_runs_beside_the_published_numbers(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location(
        "collect_cifar100", os.path.join(os.path.dirname(CONF), "scripts", "collect_cifar100.py"))
    collector = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collector)

    def write(pair, method, student, baseline=None, seed=42):
        run = tmp_path / f"seed{seed}" / pair / method
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- pair={pair}\n- recipe=cifar100\n- distill={method}\n")
        summary = {"teacher": {"acc": 0.79, "ckpt_path": "/cache/t.ckpt"}, "student": {"acc": student}}
        if baseline is not None:
            summary["baseline"] = {"acc": baseline}
        (run / "summary.json").write_text(json.dumps(summary))

    write("resnet32x4_resnet8x4", "kd", 0.7330, baseline=0.7250)
    write("resnet32x4_resnet8x4", "kd", 0.7350, seed=7)
    write("resnet32x4_resnet8x4", "dkd", 0.7600)
    write("wrn_40_2_wrn_16_2", "dkd", 0.7600)
    out = tmp_path / "table.md"
    assert collector.main([str(tmp_path), "--output", str(out)]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| resnet32x4 → resnet8x4"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "**79.00** / 79.42 (-0.42)"  # one teacher, counted once
    assert cells[2] == "**72.50** / 72.50 (+0.00)"
    assert cells[3].startswith("**73.40 ± 0.14 (n=2)** / 73.33")
    assert cells[8] == "**76.00** / 76.32 (-0.32)" and cells[4] == "— / 73.50"
    wrn = next(line for line in out.read_text().splitlines() if line.startswith("| wrn_40_2 → wrn_16_2"))
    assert "**76.00** / 76.23" in wrn
