"""rayfin.cluster.free_port: ports handed to processes that start later come from outside the
kernel's ephemeral range, where Ray's own port-0 binds and connections would race for them."""
import random
import socket

from rayfin import cluster


def test_pick_port_stays_in_the_span_and_skips_taken_ports():
    taken = set(range(20000, 20010))
    rng = random.Random(1)
    picks = [cluster.pick_port(rng, lambda p: p not in taken, 20000, 20020) for _ in range(50)]
    assert all(p is not None and 20010 <= p < 20020 for p in picks)


def test_pick_port_gives_up_when_nothing_is_free_or_the_span_is_empty():
    rng = random.Random(1)
    assert cluster.pick_port(rng, lambda p: False, 20000, 20100, tries=5) is None
    assert cluster.pick_port(rng, lambda p: True, 30000, 30000) is None


def test_ephemeral_range_is_read_from_the_kernel_file(tmp_path):
    f = tmp_path / "range"
    f.write_text("40000\t50000\n")
    assert cluster.ephemeral_range(str(f)) == (40000, 50000)
    assert cluster.ephemeral_range(str(tmp_path / "missing")) == (32768, 60999)   # Linux's default


def test_free_port_is_below_the_ephemeral_range_and_serves_replica_ports_and_bindable():
    low, _ = cluster.ephemeral_range()
    ports = [cluster.free_port() for _ in range(20)]
    assert len(set(ports)) == len(ports)                  # never the same port twice
    for port in ports:
        if min(low, cluster.PORT_CEILING) > cluster.PORT_FLOOR:
            assert cluster.PORT_FLOOR <= port < min(low, cluster.PORT_CEILING)
        with socket.socket() as s:                 # on every interface, as HAProxy binds its stats
            s.bind(("0.0.0.0", port))


def test_free_port_skips_a_port_in_use(monkeypatch):
    with socket.socket() as held:
        held.bind(("0.0.0.0", 0))
        held.listen()
        busy = held.getsockname()[1]
        choices = iter([busy] + list(range(1024, 65536)))     # the busy one first, then any

        class Seq:
            def randrange(self, low, high):
                return next(choices)

        monkeypatch.setattr(cluster, "ephemeral_range", lambda: (65536, 65536))
        monkeypatch.setattr(cluster, "PORT_CEILING", 65536)
        monkeypatch.setattr(cluster, "PORT_FLOOR", 1024)
        assert cluster.free_port(Seq()) != busy


def test_free_port_range_is_a_bindable_block_never_handed_out_twice():
    low, _ = cluster.ephemeral_range()
    first = cluster.free_port_range(8)
    second = cluster.free_port_range(100)
    assert cluster.PORT_FLOOR <= first and first + 8 <= min(low, cluster.PORT_CEILING)
    assert not set(range(first, first + 8)) & set(range(second, second + 100))
    assert cluster.free_port() not in set(range(first, first + 8)) | set(range(second, second + 100))
    for port in range(first, first + 8):
        with socket.socket() as sock:
            sock.bind(("0.0.0.0", port))
