"""kd_lightning/app/confdir.py: a Hydra plugin choice whose plugin is missing is named with its extra."""
from __future__ import annotations

from kd_lightning.app.confdir import missing_plugin, unknown_group_choice


def test_installed_joblib_launcher_passes():
    assert missing_plugin(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]) is None
    assert unknown_group_choice(["hydra/launcher=joblib"]) is None


def test_missing_plugin_names_the_extra_in_one_line():
    plugins = {("hydra/launcher", "joblib"): ("hydra_plugins.no_such_launcher_xyz", "joblib", "hydra-joblib-launcher")}
    message = missing_plugin(["distill=kd", "hydra/launcher=joblib"], plugins=plugins)
    assert message == ("hydra/launcher=joblib needs the hydra-joblib-launcher package, which is not installed; "
                       "install it with pip install 'kd-lightning[joblib]'")
    assert missing_plugin(["hydra/launcher=basic"], plugins=plugins) is None
