"""One error policy under every executor, checked without starting a worker: an error in one job fails that
job, except the user's unreadable data (DataError) and unwritable results (OutputError), which stop the run
wherever the job ran (bench/run/executors.py)."""
import pickle
from types import SimpleNamespace

import pytest

from bench.data.dataset import DataError, OutputError
from bench.run import executors


def _config(tmp_path, executor="local", jobs=1):
    return SimpleNamespace(executor=executor, jobs=jobs, progress=False, out=str(tmp_path))


def _specs(n):
    return [SimpleNamespace(key=f"synthetic/lopo/mean/seed0/fold{i}") for i in range(n)]


class _Outcomes:
    def __init__(self):
        self.done, self.failed = [], []

    def on_done(self, spec, result):
        self.done.append(spec.key)

    def on_failed(self, spec, message, log_path):
        self.failed.append((spec.key, message))


def _planted(errors):
    """execute_job raising errors[i] for the i-th spec (None: a result)."""
    def execute(spec, dataset=None):
        error = errors[int(spec.key[-1])]
        if error is not None:
            raise error
        return {"ok": True}
    return execute


@pytest.mark.parametrize("stop", [DataError("he.png: image is corrupt"), OutputError("cannot write x: disk full")])
def test_in_process_a_bug_fails_its_job_and_bad_data_stops_the_run(stop, tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "execute_job", _planted([None, RuntimeError("planted bug"), stop, None]))
    seen = _Outcomes()
    with pytest.raises(type(stop)):
        executors.run_in_process(_config(tmp_path), _specs(4), seen.on_done, seen.on_failed)
    assert seen.done == ["synthetic/lopo/mean/seed0/fold0"]
    assert seen.failed == [("synthetic/lopo/mean/seed0/fold1", "RuntimeError: planted bug")]


def test_a_worker_hands_back_an_error_that_stops_the_run_with_its_type(monkeypatch):
    """submitit would turn the exception into traceback text; returned as a value it keeps its type."""
    monkeypatch.setattr(executors, "execute_job", _planted([DataError("he.png: image is corrupt"),
                                                             RuntimeError("planted bug")]))
    first, second = _specs(2)
    stopped = pickle.loads(pickle.dumps(executors.execute_job_in_worker(first)))
    assert isinstance(stopped, executors.StoppedRun) and isinstance(stopped.error, DataError)
    assert str(stopped.error) == "he.png: image is corrupt"
    with pytest.raises(RuntimeError, match="planted bug"):  # a bug stays the worker's failure
        executors.execute_job_in_worker(second)


class _FakeJob:
    def __init__(self, outcome, polls_until_done=0):
        self.outcome, self.polls, self.cancelled = outcome, polls_until_done, False
        self.paths = SimpleNamespace(stderr="worker.err")

    def done(self):
        self.polls -= 1
        return self.polls < 0

    def result(self):
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome

    def cancel(self, check=True):
        self.cancelled = True


def test_in_workers_the_same_errors_fail_a_job_or_stop_the_run(tmp_path, monkeypatch):
    jobs = {"fold0": _FakeJob(RuntimeError("FailedJobError: planted bug")),  # fails its job only
            "fold1": _FakeJob(executors.StoppedRun(DataError("he.png: image is corrupt")), polls_until_done=1),
            "fold2": _FakeJob({"ok": True}, polls_until_done=100),  # both still running when the run stops
            "fold3": _FakeJob({"ok": True}, polls_until_done=100),
            "fold4": _FakeJob({"ok": True})}  # never started
    submitted = []

    def submit(function, spec):
        assert function is executors.execute_job_in_worker
        submitted.append(spec.key)
        return jobs[spec.key.rsplit("/", 1)[1]]

    monkeypatch.setattr(executors, "_local_executor", lambda config, folder: SimpleNamespace(submit=submit))
    monkeypatch.setattr(executors, "POLL_SECONDS", 0)
    seen = _Outcomes()
    with pytest.raises(DataError, match="he.png: image is corrupt"):
        executors.run_with_submitit(_config(tmp_path, jobs=2), _specs(5), seen.on_done, seen.on_failed)
    assert [key for key, _ in seen.failed] == ["synthetic/lopo/mean/seed0/fold0"]
    assert "planted bug" in seen.failed[0][1] and seen.done == []
    assert jobs["fold2"].cancelled and jobs["fold3"].cancelled and not jobs["fold0"].cancelled
    assert submitted == [f"synthetic/lopo/mean/seed0/fold{i}" for i in range(4)]
