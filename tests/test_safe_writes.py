"""Writers never touch a path the user did not name (issue 27): no `.old` sibling deleted, symbolic links
refused (never written through), the umask respected, stale temporaries of killed runs cleaned, no
folders made for `..` in a path. Each reproduction of the hostile probe is one test here."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import beagle
from beagle.cli.main import main
from beagle.data.features import generate_features
from beagle.data.regenerate import RegenerateSettings, regenerate_file
from beagle.data.vocab_counts import write_draft_with_vocab
from beagle.errors import BeagleError
from beagle.files import atomic_file, atomic_folder, remove_stale_temporaries
from beagle.models.checkpoint import build_draft, load_draft, save_draft
from beagle.vocab import DraftVocab
from test_training_support import conversations, tiny_chat_target, write_jsonl

TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A saved tiny chat target, a draft that fits it and a vocabulary file for that draft."""
    from conftest_serving import save_tiny_target, tiny_draft, tiny_target

    root = tmp_path_factory.mktemp("safe-writes")
    target_dir = save_tiny_target(root / "target")
    draft_dir = root / "draft"
    save_draft(tiny_draft(tiny_target()), draft_dir)
    vocab_size = load_draft(draft_dir).config.vocab_size
    vocab_file = DraftVocab(torch.arange(0, vocab_size, 2)).save(root / "v.safetensors")
    return {"target": target_dir, "draft": str(draft_dir), "vocab": str(vocab_file)}


def vocab_draft(folders, out) -> list[str]:
    return ["vocab", "--target", folders["target"], "--vocab", folders["vocab"], "--draft", folders["draft"],
            "--out", str(out)]


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder`` (links not followed): file bytes, link targets, folders."""
    entries: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            entries[name] = "-> " + os.readlink(path)
        elif path.is_dir():
            entries[name] = "dir"
        else:
            entries[name] = path.read_bytes()
    return entries


def run_killed(script: str) -> None:
    """Run ``script`` in a child process with the code under test; it ends itself with os._exit (kill -9:
    no cleanup runs)."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(beagle.__file__).resolve().parents[1]), str(TESTS)]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 137, result.stderr[-2000:]


DIE_AT_RENAME = """
import os
from pathlib import Path
real = os.replace
def replace(source, destination, *args, **kwargs):  # kill -9 just before the rename into {name!r}
    if Path(destination).name == {name!r}:
        os._exit(137)
    return real(source, destination, *args, **kwargs)
os.replace = replace
"""


# ------------------------------------------------------------------ 1. a `.old` sibling is the user's
@pytest.mark.parametrize("existing", [False, True])
def test_vocab_draft_never_deletes_a_dot_old_folder(tmp_path, folders, capsys, existing):
    out = tmp_path / "runs" / "v"
    notes = tmp_path / "runs" / "v.old" / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    if existing:
        assert main(vocab_draft(folders, out)) == 0
    assert main(vocab_draft(folders, out)) == 0
    assert notes.read_text() == "mine"
    assert sorted(path.name for path in out.parent.iterdir()) == ["v", "v.old"]
    assert load_draft(out).vocab is not None


def test_save_pretrained_never_deletes_a_dot_old_folder_nor_foreign_files(tmp_path):
    from conftest_serving import tiny_draft, tiny_target

    draft = tiny_draft(tiny_target())
    (tmp_path / "d.old").mkdir()
    (tmp_path / "d.old" / "notes.txt").write_text("mine")
    draft.save_pretrained(tmp_path / "d")
    draft.save_pretrained(tmp_path / "d")  # replacing a draft folder
    assert (tmp_path / "d.old" / "notes.txt").read_text() == "mine"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["d", "d.old"]
    (tmp_path / "d" / "README.md").write_text("my notes")  # a folder holding more than a draft is not replaced
    with pytest.raises(BeagleError, match="README.md"):
        draft.save_pretrained(tmp_path / "d")
    assert (tmp_path / "d" / "README.md").read_text() == "my notes"


# ------------------------------------------------------------------ 3. symbolic links are refused
def test_vocab_draft_refuses_a_symlinked_out(tmp_path, folders, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (real / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    before = snapshot(tmp_path)
    assert main(vocab_draft(folders, link)) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and "symbolic link" in error[0]  # before loading
    assert snapshot(tmp_path) == before  # the link, its target and their parent unchanged


def test_every_writer_refuses_a_symlinked_destination(tmp_path):
    from beagle.data.batches import ChatDataset
    from beagle.training.trainer import TrainConfig, train

    data = write_jsonl(tmp_path / "chats.jsonl", conversations(4, seed=2, turns=1))
    target = tiny_chat_target(seed=0)
    for kind in ("file", "folder"):
        elsewhere = tmp_path / f"elsewhere-{kind}"
        elsewhere.mkdir() if kind == "folder" else elsewhere.write_text("mine")
        link = tmp_path / f"link-{kind}"
        link.symlink_to(elsewhere)
        before = snapshot(tmp_path)
        for write in (lambda: DraftVocab(torch.arange(4)).save(link),
                      lambda: atomic_file(link).__enter__(),
                      lambda: atomic_folder(link).__enter__(),
                      lambda: save_draft(build_draft(target, "beagle"), link),
                      lambda: generate_features(target, ChatDataset.from_file(data, target.tokenizer, 64), link,
                                                progress=False),
                      lambda: train(TrainConfig(data=data, out=str(link), epochs_stage1=1, epochs_stage2=1,
                                                batch_size=2, max_steps=1, progress=False, tensorboard=False),
                                    target=target)):
            with pytest.raises(BeagleError, match="symbolic link"):
                write()
        assert snapshot(tmp_path) == before, kind


# ------------------------------------------------------------------ 4. the umask
@pytest.mark.parametrize("umask", [0o077, 0o002])
def test_vocab_files_and_folders_follow_the_umask(tmp_path, folders, capsys, umask):
    previous = os.umask(umask)
    try:
        assert main(["vocab", "--target", folders["target"], "--vocab", folders["vocab"], "--draft",
                     folders["draft"], "--out", str(tmp_path / "draft-v")]) == 0
        DraftVocab(torch.arange(6)).save(tmp_path / "vocab.safetensors")
    finally:
        os.umask(previous)

    def mode(path):
        return oct(stat.S_IMODE(path.stat().st_mode))

    files = [tmp_path / "vocab.safetensors", *sorted((tmp_path / "draft-v").iterdir())]
    assert {path.name: mode(path) for path in files} == {path.name: oct(0o666 & ~umask) for path in files}
    assert mode(tmp_path / "draft-v") == oct(0o777 & ~umask)


# ------------------------------------------------------------------ 5. stale temporaries of killed runs
def test_a_killed_vocab_draft_leaves_a_temporary_the_next_run_removes(tmp_path, folders):
    out = tmp_path / "draft-v"
    run_killed(DIE_AT_RENAME.format(name=out.name) + f"""
from beagle.data.vocab_counts import write_draft_with_vocab
from beagle.vocab import DraftVocab
write_draft_with_vocab({folders['draft']!r}, DraftVocab.load({folders['vocab']!r}), {str(out)!r})
""")
    left = [path.name for path in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".draft-v."), left  # the complete temporary folder
    write_draft_with_vocab(folders["draft"], DraftVocab.load(folders["vocab"]), out)
    assert [path.name for path in tmp_path.iterdir()] == ["draft-v"]


def test_a_killed_regenerate_leaves_a_temporary_the_next_run_removes(tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", conversations(4, seed=2, turns=2))
    out = tmp_path / "regenerated.jsonl"
    settings = "RegenerateSettings(max_new_tokens=4, batch_size=2, refill_every=4)"
    run_killed(DIE_AT_RENAME.format(name=out.name) + f"""
import torch
torch.set_num_threads(1)
from beagle.data.regenerate import RegenerateSettings, regenerate_file
from test_training_support import tiny_chat_target
regenerate_file(tiny_chat_target(seed=0, initializer_range=0.1), {data!r}, {str(out)!r}, {settings})
""")
    stale = [path.name for path in tmp_path.iterdir() if path.name.startswith(".regenerated.jsonl.")]
    assert len(stale) == 1, sorted(path.name for path in tmp_path.iterdir())
    regenerate_file(tiny_chat_target(seed=0, initializer_range=0.1), data, out,
                    RegenerateSettings(max_new_tokens=4, batch_size=2, refill_every=4))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["chats.jsonl", "regenerated.jsonl"]


def test_a_folder_swap_killed_between_its_renames_is_put_back(tmp_path, folders):
    out = tmp_path / "draft-v"
    write_draft_with_vocab(folders["draft"], DraftVocab.load(folders["vocab"]), out)
    before = snapshot(out)
    run_killed(DIE_AT_RENAME.format(name=out.name).replace(
        "if Path(destination).name", "if str(source).endswith('.beagle-tmp') and Path(destination).name") + f"""
from beagle.data.vocab_counts import write_draft_with_vocab
from beagle.vocab import DraftVocab
write_draft_with_vocab({folders['draft']!r}, DraftVocab.load({folders['vocab']!r}), {str(out)!r})
""")
    assert not out.exists()  # moved to its backup; the new folder never renamed in
    remove_stale_temporaries(out)  # what the next write of out runs first
    assert [path.name for path in tmp_path.iterdir()] == ["draft-v"] and snapshot(out) == before


# ------------------------------------------------------------------ 6. regenerate's resume folder
def test_regenerate_refuses_a_symlinked_partial_folder(tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", conversations(2, seed=2, turns=1))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out.jsonl.partial").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(tmp_path)
    with pytest.raises(BeagleError, match="symbolic link"):
        regenerate_file(tiny_chat_target(seed=0), data, tmp_path / "out.jsonl", RegenerateSettings(max_new_tokens=2))
    assert snapshot(tmp_path) == before


# ------------------------------------------------------------------ 7. `..` in a path
def test_dot_dot_in_out_creates_no_folder_on_the_way(tmp_path, monkeypatch):
    from beagle.data.batches import ChatDataset

    monkeypatch.chdir(tmp_path)
    data = write_jsonl(tmp_path / "chats.jsonl", conversations(2, seed=2, turns=1))
    target = tiny_chat_target(seed=0)
    generate_features(target, ChatDataset.from_file(data, target.tokenizer, 64), "a/x/../dg", shard_size=2,
                      progress=False)
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["dg"]
    DraftVocab(torch.arange(4)).save("b/y/../v.safetensors")
    assert [path.name for path in (tmp_path / "b").iterdir()] == ["v.safetensors"]
    save_draft(build_draft(target, "beagle"), "c/z/../d")
    assert [path.name for path in (tmp_path / "c").iterdir()] == ["d"]


# ------------------------------------------------------------------ the helper itself
def test_a_failed_write_keeps_the_previous_version_and_leaves_nothing(tmp_path):
    (tmp_path / "f.txt").write_text("old")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_text("old")
    for helper, name in ((atomic_file, "f.txt"), (atomic_folder, "d")):
        with pytest.raises(RuntimeError, match="interrupted"):
            with helper(tmp_path / name) as temporary:
                (temporary / "a" if temporary.is_dir() else temporary).write_text("new")
                raise RuntimeError("interrupted")
    assert snapshot(tmp_path) == {"d": "dir", "d/a": b"old", "f.txt": b"old"}


def test_only_the_helpers_own_names_are_cleaned(tmp_path):
    destination = tmp_path / "out"
    ours = [tmp_path / ".out.abcd1234.beagle-tmp", tmp_path / ".out.abcd1235.beagle-old"]
    theirs = [tmp_path / "out.old", tmp_path / ".out.abcd1234.tmp", tmp_path / ".out.abc.beagle-tmp",
              tmp_path / ".other.abcd1234.beagle-tmp", tmp_path / ".out.abcd1234.beagle-tmp.bak"]
    for path in ours[:1] + theirs:
        path.mkdir()
    destination.mkdir()  # out exists: its backup is stale, not put back
    ours[1].mkdir()
    link = tmp_path / ".out.abcd1236.beagle-tmp"
    link.symlink_to(theirs[0])
    with atomic_folder(destination) as temporary:
        (temporary / "new").write_text("new")
    assert not any(path.exists() for path in ours)
    assert all(path.is_dir() for path in theirs) and link.is_symlink()
    assert [path.name for path in destination.iterdir()] == ["new"]
