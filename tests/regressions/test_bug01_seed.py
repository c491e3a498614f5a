"""BUGS #1 — the seed: long-term writable pins of dirty-tracked file folios.

Found by: Jan Kara (2018, "dirty page without buffers" on ext4), John
Hubbard's reports; closed by Lorenzo Stoakes' series in Linux 6.5.

Interleaving (the reproducer the harness shrank a random 6.4 run to):
  1. mmap an ext4 file MAP_SHARED, read-write;
  2. pin_user_pages_fast(FOLL_LONGTERM | FOLL_WRITE): the GUP write fault calls
     page_mkwrite, the folio is dirty;
  3. writeback: folio_mkclean write-protects the PTE, the folio is clean;
  4. the pin holder writes through the kernel's direct mapping: no fault, no
     page_mkwrite — the file system never hears of it.

Fix: check_vma_flags() refuses FOLL_LONGTERM|FOLL_WRITE on mappings that
need dirty tracking (writable_file_mapping_allowed), GUP-fast's whitelist
falls back to it.  Detected by invariant 3 (no clean-to-written transition
without page_mkwrite) at step 4, and by the lost-write audit at the end.
"""


def test_replays_under_6_4_and_6_5_refuses(reproducer):
    data, planted, fixed = reproducer("bug01_seed_6_4")
    assert [op["op"] for op in data["ops"]] == ["mmap", "pin", "writeback", "pin_write"]
    assert planted is not None and planted.invariant == "write-notify-bypass"
    assert planted.step == 3
    assert fixed is None                 # 6.5 refuses the pin at step 2


def test_the_lost_write_itself():
    """Without the write-notify check the data is lost: the demo's story."""
    from pygup.tools.cli import seed_story
    obs = seed_story("6.4", "ext4", out=lambda s: None)
    assert obs["lost"] and obs["warnings"] == 2
    assert not seed_story("6.5", "ext4", out=lambda s: None)["lost"]
