"""The controller: the one process that decides who gets which GPUs, and its ledger.

    core.py        ControllerCore, the controller's API apart from Ray, composed of:
      state.py       what it knows between cycles and the state transitions
      cycle.py       one cycle: observe, snapshot, decide, act, record
      auth.py        who is calling (desk, operator, `rayfin up`'s deploy key)
      serving.py     serving reservations charged to a desk
      recovery.py    rebuild from the ledger after a restart, re-adopt by name
      views.py       usage table, pools, demand per pool
    records.py     JobRecord, ServingReservation, Event: what the ledger stores
    ledger.py      the Ledger protocol and SQLite; ledger_pg.py PostgreSQL; ledger_io.py export/import
    backend.py     the one seam to Ray (FakeBackend for tests); ray_backend.py the real one
    actor.py       the detached Ray actor around ControllerCore, and the capacity loop
    patrol.py      policing of GPU use outside rayfin (policing.py pure, police_ray.py Ray's side)
    recorder.py    the seam to metrics and traces

Import the module you need; this package imports nothing, so `import rayfin.controller.ledger`
does not pull in Ray.
"""
