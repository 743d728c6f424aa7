"""Helpers shared by the test tiers; test files import from here, never from each other.

    builders.py   configs from configs/test.yaml with patches, an injected Clock, the controller
                  core on the fake backend (unit tests)
    policy.py     topologies, desk quotas, running and pending jobs, snapshots (policy tests)
    api.py        the API's controller port over an in-process ControllerCore
    serve.py      the edge filter with two desks' quotas
    cluster.py    desk tokens, wait_for (poll a condition with a deadline), the CLI in-process
    jobs.py       job functions the tests submit (workers import them from the checkout)
    procs.py      process trees: what a command started, and killing exactly that
"""
