"""``pygup demo`` / ``pygup world``: JSON, the timeline pictures (written
and readable), and stories that say only what happened."""
import json
import xml.etree.ElementTree as ET

import pytest

from pygup.tools.cli import main, seed_story, world


def test_demo_json_for_one_fs_and_policy(capsys):
    assert main(["demo", "--fs", "ext4", "--policy", "6.4", "--json"]) == 0
    (story,) = json.loads(capsys.readouterr().out)
    assert story["fs"] == "ext4" and story["policy"] == "6.4" and story["lost"]
    steps = story["story"]["steps"]
    assert [s["actor"] for s in steps][:2] == ["user process", "driver (GUP)"]
    # the write through the pin: dirty cleared by writeback and nobody told
    dma = next(s for s in steps if s["actor"] == "device (pin holder)")
    assert dma["state"]["pinned"] and not dma["state"]["PTE write bit"]


def test_demo_plot_svg_is_written_and_parses(tmp_path, capsys):
    out = tmp_path / "story.svg"
    assert main(["demo", "--fs", "ext4", "--plot", str(out)]) == 0
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    text = out.read_text()
    for lane in ("user process", "writeback", "device (pin holder)", "PTE write bit",
                 "folio dirty", "pinned", "disk", "page_mkwrite calls"):
        assert lane in text


def test_demo_plot_png_is_readable(tmp_path, capsys):
    import matplotlib.image
    out = tmp_path / "story.png"
    assert main(["demo", "--fs", "tmpfs", "--policy", "6.5", "--plot", str(out)]) == 0
    img = matplotlib.image.imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_plot_path_with_unknown_suffix_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--plot", str(tmp_path / "story.txt")])
    assert exc.value.code == 2 and ".svg" in capsys.readouterr().err
    assert not (tmp_path / "story.txt").exists()


def test_plots_without_matplotlib_name_the_extra(monkeypatch, tmp_path):
    import builtins
    from pygup.tools import timeline
    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(timeline.PlotUnavailable, match=r"pygup\[plot\]"):
        timeline.plot_stories([timeline.Story("x", [timeline.Step("a", "b", {})])],
                              str(tmp_path / "x.svg"))


def test_world_tmpfs_says_only_what_happened():
    lines = []
    obs = world(out=lines.append, fs_name="tmpfs")
    text = "\n".join(lines)
    assert obs["first_write"][0] == 0
    assert "page_mkwrite ->" not in text and "no page_mkwrite" in text
    assert "disk updated" not in text and "nothing written" in text
    assert "refuses to long-term pin" not in text


def test_world_ext4_still_tells_the_whole_story():
    lines = []
    world(out=lines.append, fs_name="ext4")
    text = "\n".join(lines)
    assert "page_mkwrite -> dirty" in text and "disk updated" in text
    assert "notifies again" in text


def test_seed_story_tmpfs_labels():
    obs = seed_story("6.5", "tmpfs", out=lambda s: None)
    labels = [s.label for s in obs["story"].steps]
    assert "no page_mkwrite" in labels[0]
    assert "nothing to do" in labels[2]
    assert all(s.state["disk"] == "none" for s in obs["story"].steps)


def test_world_json(capsys):
    assert main(["world", "--fs", "xfs", "--json"]) == 0
    obs = json.loads(capsys.readouterr().out)
    assert obs["fs"] == "xfs" and obs["needs_dirty_tracking"]
