import math

from funrl.metrics import MetricsLogger, read_metrics


def test_each_step_is_one_json_line_and_nonfinite_values_become_null(tmp_path):
    log = MetricsLogger(tmp_path, loggers=("jsonl",))
    log.log(1, {"reward.total": 0.5, "loss": float("nan")})
    log.log(2, {"reward.total": 0.75, "loss": 1.0})
    log.close()
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert recs == [{"step": 1, "reward.total": 0.5, "loss": None}, {"step": 2, "reward.total": 0.75, "loss": 1.0}]


def test_resume_drops_records_written_after_the_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path, loggers=("jsonl",))
    for step in (1, 2, 3):
        log.log(step, {"x": step})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "x"')  # a line cut by SIGKILL
    log = MetricsLogger(tmp_path, resume_step=2, loggers=("jsonl",))
    log.log(3, {"x": 30})
    log.close()
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1), (2, 2), (3, 30)]


def test_a_restart_from_step_one_drops_the_lines_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    log = MetricsLogger(tmp_path, loggers=("jsonl",))
    log.log(1, {"x": 1})
    log.close()
    log = MetricsLogger(tmp_path, resume_step=0, loggers=("jsonl",))  # what train() passes when it starts at 1
    log.log(1, {"x": 10})
    log.close()
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 10)]


def test_tensorboard_events_are_written_beside_the_jsonl(tmp_path):
    log = MetricsLogger(tmp_path, loggers=("jsonl", "tensorboard"))
    log.log(1, {"kl": 0.1})
    log.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert not math.isnan(read_metrics(tmp_path / "metrics.jsonl")[0]["kl"])


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = MetricsLogger(tmp_path)
    for step in (1, 2, 3):
        first.log(step, {"loss": float(step)})
    first.close()  # killed after step 3; the last checkpoint was step 1
    resumed = MetricsLogger(tmp_path, resume_step=1)
    for step in (2, 3):
        resumed.log(step, {"loss": 10.0 * step})
    resumed.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1.0), (2, 20.0), (3, 30.0)]


def test_truncating_a_large_log_streams_it_and_keeps_kept_lines_byte_for_byte(tmp_path):
    import tracemalloc

    from funrl.metrics import JsonlLog

    path = tmp_path / "rollouts.jsonl"
    line = '{"step": %d, "clips": [{"hyps": ["%s"]}]}\n'
    with open(path, "w") as f:
        for step in range(1, 2001):
            f.write(line % (step, "x" * 5000))  # ~10 MB
        f.write('{"step": 2001, "clips": [{"hy')  # cut by a kill
    tracemalloc.start()
    JsonlLog(path, resume_step=1500).close()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, f"truncation held {peak} bytes: the file was read whole"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 1500 and lines[-1] == line % (1500, "x" * 5000)


def test_should_log_all_off_and_every_n():
    from funrl.metrics import should_log

    assert [s for s in range(1, 11) if should_log("every_3", s)] == [3, 6, 9]
    assert all(should_log("all", s) for s in range(1, 5)) and not any(should_log("off", s) for s in range(1, 5))
