"""The configs in conf/ (found through kd_lightning/app/confdir.py) compose with train.yaml and build what they name:
every option of every group, every registered model as teacher and student, the data and optimizer groups, every
CIFAR table cell (pair x recipe x method) with the published settings, and the multi-node launchers."""
import glob
import os

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from kd_lightning.app.build import build_loss
from kd_lightning.app.confdir import CONFIG_DIR
from kd_lightning.losses import Loss

from kd_lightning.models import list_models, model_entry
from kd_lightning.taps import FeatureTaps

from .helpers import options

CONF = str(CONFIG_DIR)

MODEL_PRESETS = [n for n in list_models() if model_entry(n).task == "classification"]  # LM presets: tests/app
PAIRS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(CONF, "pair", "*.yaml")))
METHODS = ("kd", "dkd", "fitnet", "at", "rkd", "crd")
# A quick subset covering every pair and every special case (DKD betas, lr 0.01); the rest runs as slow tests.
QUICK_CELLS = [("resnet32x4_resnet8x4", "kd"), ("resnet56_resnet20", "dkd"), ("wrn_40_2_wrn_16_2", "fitnet"),
               ("vgg13_vgg8", "crd"), ("resnet32x4_ShuffleV2", "dkd"), ("resnet32x4_ShuffleV2", "at")]


@pytest.mark.parametrize("preset", MODEL_PRESETS)
def test_model_preset_composes_as_teacher_and_student(compose, preset):
    cfg = compose(f"teacher={preset}", f"student={preset}", "data=cifar100")
    assert cfg.teacher == cfg.student  # one description, two roles
    node = cfg.student
    assert node.net.model_name == preset and node.ckpt_path is None
    assert dict(node.taps) == model_entry(preset).taps
    if preset in ("torchvision", "timm"):
        return  # hub models: tested in tests/models (no weights here)
    net = instantiate(node.net)
    taps = node.taps
    FeatureTaps(net, [*taps.stages, taps.hint, taps.embedding]).remove()  # every named path exists
    assert taps.hint in taps.stages


def test_torchvision_teacher_from_the_command_line(compose):
    cfg = compose("teacher=torchvision", "teacher.name=resnet34", "teacher.weights=DEFAULT", "data=imagefolder",
                        "student=timm", "student.name=resnet10t")
    assert cfg.teacher.net.name == "resnet34" and cfg.teacher.net.weights == "DEFAULT"
    assert cfg.teacher.net.num_classes == 1000 and cfg.student.net.pretrained is False
    assert cfg.data.data_dir.endswith("/imagenet") and cfg.data.num_train == 1281167


def test_data_and_optim_groups(compose):
    cfg = compose("data=cifar10", "optim=sgd_cifar")
    assert cfg.data.name == "cifar10" and cfg.data.num_classes == 10 and cfg.data.num_train == 50000
    assert cfg.data.download is False and cfg.data.return_index is False
    assert set(cfg.optim) == {"optimizer", "scheduler", "scheduler_interval"}
    assert cfg.optim.optimizer.weight_decay == pytest.approx(5e-4)
    opt = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.optim.scheduler)(opt)
    assert opt.defaults["lr"] == 0.05 and opt.defaults["momentum"] == 0.9
    assert sorted(sched.milestones) == [150, 180, 210]
    imagenet = compose("optim=sgd_imagenet").optim
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
def test_table_cell_composes_with_the_published_recipe(compose, pair, method):
    cfg = compose(f"pair={pair}", "recipe=cifar100", f"distill={method}")
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


def test_feature_methods_keep_kd_outside_the_table_protocol(compose):
    cfg = compose("distill=at")
    assert (cfg.distill.ce_weight, cfg.distill.kd_weight) == (0.1, 0.9)
    assert compose("distill=crd").distill.kd_weight == 1.0 and compose("distill=dkd").distill.beta == 8.0


def test_imagenet_experiment_composes(compose):
    cfg = compose("experiment=imagenet_resnet34_resnet18_kd")
    assert cfg.teacher.name == "resnet34" and cfg.teacher.weights == "DEFAULT" and cfg.student.name == "resnet18"
    assert (cfg.distill.temperature, cfg.distill.ce_weight, cfg.distill.kd_weight) == (1.0, 0.5, 0.5)
    assert cfg.trainer.max_epochs == 100 and cfg.data.batch_size == 256 and cfg.optim.optimizer.lr == 0.1
    assert cfg.teacher_fit.max_epochs == 0 and cfg.baseline.enabled is False  # pretrained teacher, as is


@pytest.mark.slow
def test_cifar_experiment_runs_through_kd_train(compose, tmp_path, monkeypatch):
    """pair=resnet56_resnet20 recipe=cifar100 distill=dkd end to end (teacher, baseline, student) on a tiny CIFAR-100
    written in the real format, with the networks swapped for resnet8 and a few batches per stage."""
    import os as _os

    import torchvision.datasets.cifar as tv_cifar

    from data.helpers import write_cifar100
    from kd_lightning.app.pipeline import run

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: _os.path.isfile(fpath))
    data_dir = write_cifar100(tmp_path / "data", n_train=48, n_test=16)
    cfg = compose(
        "pair=resnet56_resnet20", "recipe=cifar100", "distill=dkd", "teacher=resnet8", "student=resnet8", "trainer=cpu",
        "trainer.precision=32-true", "debug=limit", f"paths.data_dir={data_dir}", "data.batch_size=8",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "logger=none")
    summary = run(cfg)
    assert {"teacher", "baseline", "student"} <= set(summary)
    assert summary["distill"]["name"] == "dkd" and summary["student"]["params"] == summary["baseline"]["params"]
    assert (tmp_path / "run" / "summary.json").is_file()


# ---------------------------------------------------------------------------------- multi-node
def test_submitit_slurm_launcher_composes(compose):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose("hydra/launcher=submitit_slurm", "trainer=ddp_multinode", hydra=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2
    cfg = compose("experiment=slurm_example", "trainer.num_nodes=3", "hydra.launcher.partition=gpu", hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher") and launcher["partition"] == "gpu"
    assert launcher["nodes"] == 3 and launcher["tasks_per_node"] == cfg.trainer.devices == launcher["gpus_per_node"]
    assert cfg.trainer.num_nodes == 3 and cfg.task_name == "slurm"


def test_ddp_multinode_trainer_config_instantiates_lazily(compose):
    cfg = compose("trainer=ddp_multinode")
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 4 and cfg.trainer.sync_batchnorm is True


GROUPS = ["data", "teacher", "student", "distill", "module", "optim", "trainer", "callbacks", "logger", "recipe",
          "pair", "experiment", "hparams_search", "debug"]


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(compose, group):
    names = options(group)
    assert names, f"conf/{group} has no options"
    lm_models = {n for n in list_models() if model_entry(n).task == "causal_lm"}
    for name in names:
        # Language-model data and models compose with the LM experiment (they read data.vocab_size).
        lm_only = name.startswith("lm_") if group == "data" else name in lm_models and group in ("teacher", "student")
        needs_path = ["data.path=corpus.txt"] if group == "data" and name in ("lm_text", "lm_jsonl") else []
        cfg = compose(*(["experiment=lm_pydoc"] if lm_only else []), f"{group}={name}", *needs_path)
        # Resolve everything but the hydra-runtime and environment-dependent paths.
        for key in ("data", "teacher", "student", "distill", "optim"):
            OmegaConf.to_container(cfg[key], resolve=True)
        # ... and the option builds what it names
        if group == "distill":
            assert isinstance(build_loss(cfg.distill), Loss), name
        elif group == "optim":
            opt = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
            assert isinstance(opt, torch.optim.Optimizer) and opt.defaults["lr"] == cfg.optim.optimizer.lr, name
        elif group == "data" and not lm_only:  # text data train a tokenizer: tested in tests/data/test_text.py
            dm = instantiate(cfg.data)
            assert isinstance(dm, L.LightningDataModule), name
            assert type(dm).__name__ == cfg.data._target_.rsplit(".", 1)[1], name


def test_teacher_and_student_choices_are_the_registry_and_no_private_bases():
    assert options("teacher") == options("student") == list_models()
    for group in GROUPS:
        assert not [o for o in options(group) if o.startswith("_")], group


def test_default_models_match_the_paper_and_compress_10x(compose):
    count = lambda m: sum(p.numel() for p in m.parameters())
    paper = {"cnn1d_25": 5210, "mlp": 15210}
    for preset, n in paper.items():
        cfg = compose(f"student={preset}")
        assert count(instantiate(cfg.student.net)) == n
    cfg = compose()
    assert count(instantiate(cfg.teacher.net)) >= 10 * count(instantiate(cfg.student.net))
