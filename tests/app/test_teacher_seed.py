"""teacher_fit.seed (kd_lightning/app/pipeline.py, teacher_store.py): one teacher for runs of several seeds."""
from kd_lightning.app.teacher_store import teacher_key


def test_teacher_seed_replaces_the_run_seed_in_the_teacher_key(compose):
    # data.seed (the validation split) follows the run's seed unless fixed; a shared teacher needs one split
    assert teacher_key(compose("seed=1", "data.seed=0")) != teacher_key(compose("seed=2", "data.seed=0"))
    shared = {teacher_key(compose(f"seed={s}", "data.seed=0", "teacher_fit.seed=0")) for s in (1, 2, 3)}
    assert len(shared) == 1
    assert shared != {teacher_key(compose("seed=1", "data.seed=0", "teacher_fit.seed=5"))}


def test_shared_teacher_trains_once_with_its_own_seed(compose):
    from kd_lightning.app.pipeline import run

    first = run(compose("seed=1", "data.seed=0", "teacher_fit.seed=0", "debug=limit", "teacher_fit.use_store=true",
                        "baseline.enabled=false", "trainer.enable_progress_bar=false", "logger=none", out="a"))
    second = run(compose("seed=2", "data.seed=0", "teacher_fit.seed=0", "debug=limit", "teacher_fit.use_store=true",
                         "baseline.enabled=false", "trainer.enable_progress_bar=false", "logger=none", out="b"))
    assert first["teacher"]["source"] == "trained" and second["teacher"]["source"] == "store"
    assert first["teacher"]["acc"] == second["teacher"]["acc"]


def test_teacher_seed_equal_to_a_run_seed_shares_that_runs_teacher(compose):
    # One teacher for a seed table and the default run: the seed it trains with is keyed once.
    assert teacher_key(compose("seed=1", "data.seed=0", "teacher_fit.seed=42")) == \
        teacher_key(compose("seed=42", "data.seed=0"))
