"""Malformed and hostile dataset directories: each ends with exit 2 and one stderr line naming
the file (``merc data inspect --verify``, and ``merc train`` for the open path) - no traceback,
no training on a broken split (issue 10)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from merc.data.format import (DatasetError, Dialogue, Manifest, read_manifest, verify_fingerprint,
                              write_dataset)
from merc.data.synthetic import synth


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "base"
    synth(d, "tiny", 0)
    return d


def _manifest(d: Path, **changes) -> None:
    m = json.loads((d / "manifest.json").read_text())
    for k, v in changes.items():
        m[k] = v
    (d / "manifest.json").write_text(json.dumps(m))


def _npy(d: Path, rel: str, fn) -> None:
    a = np.load(d / rel)
    np.save(d / rel, fn(a))


def _splits(d: Path, **split) -> None:
    m = json.loads((d / "manifest.json").read_text())
    m["splits"].update(split)
    (d / "manifest.json").write_text(json.dumps(m))


CASES = {
    # name: (mutation, file the message must name)
    "split-name-escapes": (lambda d: _splits(d, **{"../../etc": {"dialogues": 1,
                                                                  "utterances": 1}}),
                           "manifest.json"),
    "modality-name-escapes": (lambda d: _manifest(d, modalities={"audio": 8, "../../../x": 4}),
                              "manifest.json"),
    "extra-label-name-escapes": (lambda d: _manifest(d, extra_labels={"../x": ["a"]}),
                                 "manifest.json"),
    "manifest-not-json": (lambda d: (d / "manifest.json").write_text("{not json"),
                          "manifest.json"),
    "manifest-wrong-types": (lambda d: _manifest(d, num_classes="six"), "manifest.json"),
    "label-names-count": (lambda d: _manifest(d, label_names=["a", "b"]), "manifest.json"),
    "label-out-of-range": (lambda d: _npy(d, "train/labels.npy", lambda a: a * 0 + 99),
                           "labels.npy"),
    "labels-float": (lambda d: _npy(d, "valid/labels.npy", lambda a: a.astype(np.float32)),
                     "labels.npy"),
    "speaker-out-of-range": (lambda d: _npy(d, "test/speakers.npy", lambda a: a + 7),
                             "speakers.npy"),
    "offsets-not-monotonic": (lambda d: _npy(d, "train/offsets.npy", lambda a: a[::-1].copy()),
                              "offsets.npy"),
    "offsets-beyond-arrays": (lambda d: _npy(d, "train/offsets.npy",
                                             lambda a: np.append(a[:-1], a[-1] + 50)),
                              "offsets.npy"),
    "dialogues-json-shortened": (lambda d: (d / "valid/dialogues.json").write_text(
        json.dumps(json.loads((d / "valid/dialogues.json").read_text())[:-1])),
        "dialogues.json"),
    "dialogues-json-not-a-list": (lambda d: (d / "test/dialogues.json").write_text('{"a": 1}'),
                                  "dialogues.json"),
    "feature-wrong-dim": (lambda d: _npy(d, "train/text.npy", lambda a: a[:, :3].copy()),
                          "text.npy"),
    "feature-truncated-file": (lambda d: (d / "train/audio.npy").write_bytes(
        (d / "train/audio.npy").read_bytes()[:100]), "audio.npy"),
    "feature-object-array": (lambda d: np.save(d / "train/visual.npy",
                                               np.array([None] * 3, dtype=object),
                                               allow_pickle=True), "visual.npy"),
    "labels-missing": (lambda d: (d / "test/labels.npy").unlink(), "labels.npy"),
    "feature-value-changed": (lambda d: _npy(d, "train/audio.npy", lambda a: a + 1.0),
                              "manifest.json"),
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "merc.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def _assert_one_line_exit_2(r: subprocess.CompletedProcess, names: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert names in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_dataset_dir_exit_2_one_line(base, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(base, d)
    mutate, names = CASES[name]
    mutate(d)
    _assert_one_line_exit_2(_run(["data", "inspect", "--verify", str(d)], tmp_path), names)


def test_empty_train_split_is_refused_by_train(base, tmp_path):
    """Used to train and exit 0."""
    m = read_manifest(base)
    from merc.data.format import iter_dialogues, read_split
    splits = {s: list(iter_dialogues(read_split(base, s, m))) for s in ("valid", "test")}
    d = tmp_path / "empty-train"
    write_dataset(d, m.model_copy(update={"fingerprint": ""}), {"train": [], **splits})
    line = _assert_one_line_exit_2(_run(["train", "mmgcn", "--data", str(d), "--epochs", "1"],
                                        tmp_path), str(d / "train"))
    assert "0 dialogues" in line


def test_changed_file_is_reported_at_open_and_by_verify(base, tmp_path):
    """The cheap check at open notices a changed size/mtime and hashes again; a same-size,
    same-mtime edit is only found by --verify (full hash)."""
    d = tmp_path / "changed"
    shutil.copytree(base, d)
    assert verify_fingerprint(d) == "hashed in full"
    assert verify_fingerprint(d).startswith("unchanged")
    p = d / "valid" / "text.npy"
    st = p.stat()
    a = np.load(p)
    a[0, 0] += 1
    np.save(p, a)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))       # forge size and mtime
    assert verify_fingerprint(d).startswith("unchanged")  # the cheap check cannot tell
    with pytest.raises(DatasetError, match="fingerprint .* does not match"):
        verify_fingerprint(d, full=True)
    p.touch()
    from merc.data.dataset import MercData
    with pytest.raises(DatasetError, match="manifest.json: fingerprint"):
        MercData(d)


def test_gcnet_utterance_id_cannot_leave_the_feature_folder(tmp_path):
    """An utterance id ``../../secret`` would read ``secret.npy`` beside the label pickle."""
    src = tmp_path / "gcnet"
    (src / "features" / "wav").mkdir(parents=True)
    np.save(tmp_path / "secret.npy", np.ones(4, np.float32))
    vids = ["Ses01_a", "Ses01_b", "Ses02_c"]
    ids = {v: [f"{v}_0", "../../../secret"] for v in vids}
    t = (ids, {v: [0, 1] for v in vids}, {v: ["M", "F"] for v in vids}, {}, set(vids[:2]),
         {vids[2]})
    for v in vids:
        np.save(src / "features" / "wav" / f"{v}_0.npy", np.ones(4, np.float32))
    (src / "IEMOCAP_features_raw_6way.pkl").write_bytes(pickle.dumps(t, protocol=2))
    r = _run(["data", "import", "--format", "gcnet", str(src), str(tmp_path / "out"),
              "--opt", "audio_feature=wav", "--opt", "text_feature=none",
              "--opt", "visual_feature=none", "--opt", "valid_dialogues=1"], tmp_path)
    line = _assert_one_line_exit_2(r, "../../../secret")
    assert "outside" in line
