"""Where the Hydra configs are: the checkout's ``conf/`` or, from a wheel, the packaged copy."""
from pathlib import Path

_package = Path(__file__).resolve().parent.parent
_checkout = _package.parent / "conf"
CONFIG_DIR = _checkout if (_checkout / "train.yaml").is_file() else _package / "conf"

def ddp_child() -> bool:
    """True in a DDP rank that Lightning started (LOCAL_RANK > 0): it joins its launching process's run."""
    import os

    return os.environ.get("LOCAL_RANK", "0") not in ("", "0")


def set_run_id() -> None:
    """Give this process its own default run/sweep directory: ``KD_RUN_ID`` (read by conf/hydra/default.yaml
    as ``${oc.env:KD_RUN_ID,}``) becomes ``_<pid>-<4 random hex digits>``. Called by the entry points, never
    on import; a Lightning DDP child (LOCAL_RANK > 0) keeps its parent's value so all ranks share one
    directory. Without it (configs composed by other code) the directory name is just the time."""
    import os
    import secrets

    if not ddp_child() or "KD_RUN_ID" not in os.environ:
        os.environ["KD_RUN_ID"] = f"_{os.getpid()}-{secrets.token_hex(2)}"


def group_options(group: str) -> list:
    """The choices of config group ``group``: its YAML files and what the ConfigStore holds (model presets)."""
    from hydra.core.config_store import ConfigStore

    folder = CONFIG_DIR / group
    names = {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set()
    try:
        names |= {Path(n).stem for n in ConfigStore.instance().list(group)}
    except (IOError, OSError, KeyError, ValueError):  # not a stored group
        pass
    return sorted(names)


# Hydra plugin choices and the extra that installs each: (group, choice) -> (plugin module, extra, package).
PLUGIN_CHOICES = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib", "hydra-joblib-launcher"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm", "hydra-submitit-launcher"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "slurm", "hydra-submitit-launcher"),
}


def missing_plugin(args, plugins=None) -> "str | None":
    """One line for the first ``hydra/launcher=<choice>`` in ``args`` whose Hydra plugin is not installed (Hydra
    itself only says the config is not found), naming the kd-lightning extra that installs it; else None."""
    import importlib.util

    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        found = (plugins or PLUGIN_CHOICES).get((key, value.strip()))
        if found is None:
            continue
        module, extra, package = found
        try:
            present = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package that is not there
            present = False
        if not present:
            return (f"{key}={value} needs the {package} package, which is not installed; install it with "
                    f"pip install 'kd-lightning[{extra}]'")
    return None


def unknown_group_choice(args) -> "str | None":
    """One line for the first ``group=choice`` in the command line ``args`` that names no option of its group
    (Hydra's own message spans a screen), or None. Sweeps (``distill=kd,dkd``) are checked choice by choice; a
    Hydra plugin choice whose plugin is not installed is named with its extra (:func:`missing_plugin`)."""
    plugin = missing_plugin(args)
    if plugin:
        return plugin
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.lstrip("+~").partition("=")
        if not key or "." in key or "/" in key or "(" in value or "*" in value or value[:1] in "{['\"$":
            continue  # a key of a node, a nested group, a sweep expression or a value (logger={}) Hydra evaluates
        options = group_options(key)
        if not options:
            continue
        for choice in value.split(","):
            choice = choice.strip()
            if choice and choice != "null" and choice not in options:
                return (f"{key}={choice} is not an option of the {key} config group; choose one of "
                        f"{', '.join(options)} (--help lists every group)")
    return None
