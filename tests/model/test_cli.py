"""The demo's stories, checked: the world (write-notify), and the seed's
scenario under both policies."""
import pytest

from pygup.tools.cli import main, pin_story, seed_story, world


def test_world_ext4():
    lines = []
    obs = world(out=lines.append)
    assert obs["needs_dirty_tracking"] and obs["wants_writenotify"]
    assert obs["first_write"] == (1, True, True)
    assert obs["writeback"] == (1, False, False, 0x1111)
    assert obs["second_write"] == (2, True, True)
    assert obs["final_disk"] == 0x2222 and obs["warnings"] == 0
    assert any("page_mkwrite" in line for line in lines)


def test_world_tmpfs():
    obs = world(out=lambda s: None, fs_name="tmpfs")
    assert not obs["needs_dirty_tracking"]
    assert obs["first_write"] == (0, True, True)
    assert obs["writeback"][0] == 0 and obs["final_disk"] == 0


def test_seed_story_6_4_loses_the_write():
    obs = seed_story("6.4", "ext4", out=lambda s: None)
    assert obs["pin"] == 1
    assert obs["lost"] and obs["disk"] == 0x1111 and obs["read_back"] == 0x1111
    assert obs["warnings"] == 2      # dirtied without page_mkwrite; skipped without buffers


def test_seed_story_6_5_refuses_the_pin():
    obs = seed_story("6.5", "ext4", out=lambda s: None)
    assert obs["pin"] == -14
    assert obs["decided_by"] == "writable_file_mapping_allowed"
    assert obs["warnings"] == 0 and not obs["lost"]


def test_seed_story_tmpfs_works_under_both():
    for policy in ("6.4", "6.5"):
        obs = seed_story(policy, "tmpfs", out=lambda s: None)
        assert obs["pin"] == 1 and not obs["lost"] and obs["warnings"] == 0


def test_main_demo_and_explain(capsys):
    assert main(["demo"]) == 0
    text = capsys.readouterr().out
    assert "WRITE LOST" in text and "writable_file_mapping_allowed" in text
    assert main(["explain", "--fs", "ext4", "--flags", "LONGTERM,WRITE"]) == 1   # refused
    assert "decided by: writable_file_mapping_allowed" in capsys.readouterr().out
    assert main(["explain", "--fs", "tmpfs"]) == 0
    assert "decided: allowed" in capsys.readouterr().out


def test_pin_story():
    lines = []
    obs = pin_story(out=lines.append)
    assert obs["mremap"] == (True, True, 1025)        # moved, same frame, pin + mapping
    assert obs["pin_write_seen"] == 0x2222
    assert obs["dontneed"] == (0, 0x2222, 0)
    assert obs["diverged"] == (0x3333, 0x4444, True)
    assert obs["freed"] and any("MADV_DONTNEED" in line for line in lines)
    assert main(["world", "--story", "pin"]) == 0


@pytest.mark.parametrize("version, decided", [
    ("6.1", "decided: allowed"), ("6.12", "decided by: writable_file_mapping_allowed"),
    ("6.18", "decided by: writable_file_mapping_allowed"), ("6.1.192", "decided: allowed")])
def test_explain_takes_any_known_version(capsys, version, decided):
    # exit status: 0 allowed, 1 refused
    assert main(["explain", "--policy", version]) == (0 if decided.startswith("decided:") else 1)
    out = capsys.readouterr().out
    assert f"policy={version}" in out and decided in out


def test_explain_refuses_an_unknown_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["explain", "--policy", "6.99"])
    assert e.value.code == 2
    assert "6.1 to 6.18" in capsys.readouterr().err
