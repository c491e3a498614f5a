"""Reprs for people: plain ``repr(PTE)`` shows the decoded fields; every
model object a notebook shows has an HTML table."""
import xml.etree.ElementTree as ET

import pytest

from pygup import FOLL, MAP, PROT, Machine
from pygup.explain import explain


@pytest.fixture
def world():
    m = Machine(policy="6.5", memory="64MiB", movable="8MiB")
    p = m.spawn()
    a = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    p.write(a, 0x1234)
    return m, p, a


def test_pte_repr_is_decoded(world):
    m, p, a = world
    r = repr(p.mm.pte(a))
    assert r.startswith("PTE(present, write, dirty")
    assert f"pfn={p.mm.pte(a).pfn:#x}" in r
    assert repr(p.mm.pte(a + (1 << 20))) == "PTE(none)"


def test_pte_repr_shows_write_protection(world):
    m, p, a = world
    p.mprotect(a, 4096, PROT.READ)
    r = repr(p.mm.pte(a))
    assert "present" in r and "write," not in r


def _parse(html: str):
    return ET.fromstring(html)       # well-formed: a notebook can render it


def test_html_reprs(world):
    m, p, a = world
    ret, pages = p.mm.pin_user_pages(a, 1, FOLL.WRITE)
    assert ret == 1
    fs = m.mount("ext4")
    f = fs.create("data", 4096)
    b = p.mmap(4096, PROT.READ | PROT.WRITE, MAP.SHARED, file=f)
    objects = {
        "Machine": (m, "6.5"),
        "process": (p, f"{b:#x}"),
        "VMA": (p.mm.find_vma(b), "needs dirty tracking"),
        "page-table entry": (p.mm.pte(a), hex(p.mm.pte(a).pfn)),
        "folio": (m.folio(pages[0]), "maybe DMA-pinned"),
        "pages": (pages, "FOLL_PIN"),
        "decided by": (explain(p.mm, b, 1, FOLL.LONGTERM | FOLL.WRITE).trace,
                       "writable_file_mapping_allowed"),
    }
    for title, (obj, needle) in objects.items():
        html = obj._repr_html_()
        table = _parse(html)
        assert table.tag == "table", title
        assert title in html and needle in html, (title, html)
    p.mm.unpin_user_pages(pages)


def test_html_escapes_values():
    m = Machine(memory="64MiB", movable="8MiB")
    m.mount_custom("<b>evil</b>")
    assert "<b>evil" not in m._repr_html_() and "&lt;b&gt;evil" in m._repr_html_()
