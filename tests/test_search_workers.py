"""A search that several workers share: on a real PostgreSQL server (`.ci/postgres_up`, which
the cluster step of CI starts) and on a journal file. Two workers at once end the study with
exactly n_trials distinct trials, the chosen one tested once; a worker that dies leaves a trial
that the next worker marks failed and runs again with the same values; workers started together
on a new database all find its tables."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers.cli import TINY_SEARCH as TINY

pytestmark = pytest.mark.cluster

POSTGRES = os.environ.get(
    "MTCSNN_TEST_POSTGRES", "postgresql+psycopg://mtcsnn:mtcsnn@localhost/mtcsnn"
)


def postgres_up() -> bool:
    try:
        import sqlalchemy

        with sqlalchemy.create_engine(POSTGRES).connect():
            return True
    except Exception:
        return False


# opens the study storage at a given moment: several at once race to create the tables
OPEN_AT = """
import sys, time
from mtcsnn.run.search import study_storage
url, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
study_storage(url)
"""


def test_workers_started_together_on_a_new_database_all_open_it():
    if not postgres_up():
        pytest.skip(f"no PostgreSQL at {POSTGRES}: .ci/postgres_up")
    import sqlalchemy

    name = f"mtcsnn_new_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        url, start = f"{POSTGRES.rsplit('/', 1)[0]}/{name}", time.time() + 8
        opening = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_AT, url, str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(6)
        ]
        outputs = [p.communicate(timeout=120)[0] for p in opening]
        assert [p.returncode for p in opening] == [0] * 6, "\n".join(outputs)[-3000:]
    finally:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def worker(folder: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mtcsnn.train", *TINY, *overrides, f"hydra.run.dir={folder}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )


def study_of(storage: str, name: str):
    import optuna

    from mtcsnn.run.search import study_storage

    return optuna.load_study(study_name=name, storage=study_storage(storage))


def storages(tmp_path: Path) -> dict[str, str]:
    return {"journal": str(tmp_path / "study.journal"), "postgres": POSTGRES}


@pytest.mark.parametrize("kind", ["journal", "postgres"])
def test_two_workers_at_once_end_with_n_trials_distinct_trials(tmp_path, kind):
    if kind == "postgres" and not postgres_up():
        pytest.skip(f"no PostgreSQL at {POSTGRES}: .ci/postgres_up")
    # a study of its own: the database outlives the test
    storage, name = storages(tmp_path)[kind], f"workers_{kind}_{uuid.uuid4().hex}"
    shared = ["hparams_search.n_trials=4", f"hparams_search.storage={storage}"]
    shared.append(f"hparams_search.study_name={name}")
    workers = [
        worker(tmp_path / f"w{i}", *shared, f"hparams_search.sampler_seed={i}") for i in (0, 1)
    ]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, output in zip(workers, outputs, strict=True):
        assert w.returncode == 0, output[-3000:]
        assert "Traceback" not in output
    study = study_of(storage, name)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4
    assert len({tuple(sorted(t.params.items())) for t in complete}) == 4
    # both workers ran trials, each in its own folder
    dirs = {Path(t.user_attrs["run_dir"]).parent.name for t in complete}
    assert dirs == {"w0", "w1"}, dirs
    # the chosen trial, and only it, was tested, once
    tested = [
        t.number
        for t in complete
        if json.loads((Path(t.user_attrs["run_dir"]) / "metrics.json").read_text())["test"]
    ]
    assert tested == [study.best_trial.number]
    assert sum(output.count("- test: auroc") for output in outputs) == 1


def test_a_dead_worker_s_trial_is_marked_failed_and_run_again(tmp_path):
    storage = str(tmp_path / "study.journal")
    shared = ["hparams_search.n_trials=2", f"hparams_search.storage={storage}"]
    shared += ["hparams_search.heartbeat_s=1", "hparams_search.stale_after_s=4"]
    slow = worker(tmp_path / "dies", *shared, "trainer.max_epochs=50")
    deadline = time.monotonic() + 300
    log = tmp_path / "dies" / "train.log"
    while not (log.exists() and "epoch 2/50" in log.read_text()):  # trial 0 is training
        assert slow.poll() is None and time.monotonic() < deadline, slow.communicate()[0]
        time.sleep(0.2)
    slow.send_signal(signal.SIGKILL)
    slow.communicate()
    alive = worker(tmp_path / "lives", *shared)
    output = alive.communicate(timeout=600)[0]
    assert alive.returncode == 0, output[-3000:]
    assert "trial 0: no heartbeat for" in output
    trials = study_of(storage, "resnet18_mtcsnn").trials
    died = trials[0]
    assert died.state.name == "FAIL" and died.user_attrs["failed_because"] == "its worker stopped"
    (again,) = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert again.state.name == "COMPLETE" and again.params == died.params
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
