"""What of Ray's own output reaches a user's console (cafe_dist.logs)."""

from __future__ import annotations

from cafe_dist.logs import drop_ray_internal_lines


def test_the_raylets_note_on_started_workers_is_dropped_and_its_other_messages_print(monkeypatch, capsys):
    """The raylet pushes its messages to the driver, which prints them with Ray's print_to_stdstream
    (a sweep's Tune trials set off the note on started worker processes); an out-of-memory kill, say,
    must still reach the console."""
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)  # restored after
    monkeypatch.setattr(dispatcher, "handlers", list(dispatcher.handlers))
    drop_ray_internal_lines()
    drop_ray_internal_lines()  # a second ray.init wraps nothing twice
    note = ("WARNING: 6 PYTHON worker processes have been started on node: 3f2a with address: 10.0.0.2. This "
            "could be a result of using a large number of actors, or due to tasks blocked in ray.get() calls")
    for line in (note, "Task was killed due to the node running low on memory."):
        ray_worker.print_to_stdstream({"lines": [line], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    out = capsys.readouterr().out
    assert "worker processes have been started" not in out
    assert out.count("low on memory") == 1
