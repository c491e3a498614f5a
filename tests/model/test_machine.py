"""Machine construction, validation, CPU binding, inspection and stats."""
import errno
import threading

import pytest

from pygup import GupError, Machine


def test_bytes_per_page_at_1gib():
    m = Machine(memory="1GiB", movable="64MiB")
    st = m.stats()
    assert st["nr_frames"] == 262144
    assert st["bytes_per_page"] <= 96
    assert st["nr_free_movable"] == 64 * 256


@pytest.mark.parametrize("kwargs, match", [
    (dict(memory="1Gb"), "memory"),
    (dict(memory="3MiB"), "memory"),
    (dict(memory="64MiB", movable="64MiB"), "movable"),
    (dict(cpus=0), "cpus"),
    (dict(cpus=1000), "cpus"),
    (dict(table_free="never"), "table_free"),
    (dict(policy="5.0"), "policy"),
])
def test_bad_machine_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Machine(**{"memory": "64MiB", "movable": "8MiB", **kwargs})


def test_cpu_binding_is_exclusive(machine):
    got = {}
    hold, release = threading.Event(), threading.Event()

    def other():
        with machine.cpu(2):
            hold.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    hold.wait(10)
    with pytest.raises(GupError) as e:
        with machine.cpu(2):
            pass
    got["busy"] = e.value.errno
    release.set()
    t.join()
    with machine.cpu(2) as k:
        got["after"] = machine.current_cpu() == k == 2
    assert got == {"busy": errno.EBUSY, "after": True}
    with pytest.raises(ValueError, match="cpu"):
        with machine.cpu(99):
            pass


def test_threads_get_their_own_cpu(machine):
    seen = []

    def run():
        seen.append(machine.current_cpu())

    threads = [threading.Thread(target=run) for _ in range(3)]
    machine.current_cpu()
    for t in threads:
        t.start()
        t.join()
    assert all(0 <= c < machine.nr_cpus for c in seen)
    assert machine.current_cpu() not in seen or len(set(seen)) >= 1


def test_folio_inspection_and_bad_pfn(machine):
    z = machine.folio(0)
    assert z.flags & z.flags.ZERO
    with pytest.raises(GupError) as e:
        machine.folio(1 << 40)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(ValueError):
        machine.folio("0")


def test_alloc_prefers_movable_and_falls_back(machine):
    st = machine.stats()
    pfns = [machine.alloc_folio() for _ in range(st["nr_free_movable"] + 1)]
    zones = [machine.folio(p).zone for p in pfns]
    assert zones[:-1] == ["movable"] * st["nr_free_movable"] and zones[-1] == "normal"
    for p in pfns:
        machine._core.folio_put(p)
    assert machine.stats()["nr_free_movable"] == st["nr_free_movable"]


def test_mount_presets_and_custom(machine):
    a = machine.mount("ext4")
    b = machine.mount("ext4")
    assert a.name != b.name
    with pytest.raises(ValueError, match="preset"):
        machine.mount("zfs")
    with pytest.raises(ValueError, match="kind"):
        machine.mount_custom("weird", kind="nope")
    c = machine.mount_custom("myfs", page_mkwrite=True)
    assert c.fstype.page_mkwrite and not c.fstype.writeback


def test_failure_injection_from_the_front_door():
    """Machine.fail_nth: the next folio allocation fails as the kernel's
    would (the user's fault is out of memory: ENOMEM), and the model stays
    balanced and usable."""
    import errno

    import pytest

    from pygup import MAP, PROT, GupError, Machine
    m = Machine(memory="64MiB")
    p = m.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    m.fail_nth("folio", 1)
    with pytest.raises(GupError) as e:
        p.write(a, 7)
    assert e.value.errno == errno.ENOMEM
    assert m.failures_fired("folio") == 1
    p.write(a, 7)                       # the knob fired once: the retry works
    assert p.read(a) == 7
    p.exit()
    m.check()
    with pytest.raises(ValueError):
        m.fail_nth("slab", 1)
