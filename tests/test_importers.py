"""Round trips of every importer on small fixtures written in the exact public layouts.

Writing pickles is done here only to build fixtures of the public file layouts
(reference_impls.md §0-§5); the library itself never writes pickles.
"""
from __future__ import annotations

import json
import pickle
import sys
import types

import numpy as np
import pytest

from merc.data.dataset import MercData
from merc.data.format import IGNORE_INDEX, DatasetError, read_split
from merc.data.importers import importer_names, run_import

RNG = np.random.default_rng(0)


def _dialogues(ids, dims, n_classes, speakers="MF", lengths=None):
    """Per-field dicts keyed by id, as the tuple pickles store them."""
    out = {k: {} for k in ("spk", "lab", "text", "audio", "visual", "sent")}
    for i, vid in enumerate(ids):
        n = lengths[i] if lengths else 2 + i % 4
        out["lab"][vid] = [int(x) for x in RNG.integers(0, n_classes, n)]
        if speakers == "MF":
            out["spk"][vid] = [("M", "F")[j % 2] for j in range(n)]
        elif speakers == "onehot2":
            out["spk"][vid] = [[1, 0] if j % 2 == 0 else [0, 1] for j in range(n)]
        elif speakers == "onehot9":
            out["spk"][vid] = [list(np.eye(9)[(j * 3) % 4]) for j in range(n)]
        else:  # ints
            out["spk"][vid] = [int(j % 3) for j in range(n)]
        for m in ("text", "audio", "visual"):
            if m in dims:
                out[m][vid] = [RNG.standard_normal(dims[m]).astype(np.float32) for _ in range(n)]
        out["sent"][vid] = [f"{vid} utt {j}" for j in range(n)]
    return out


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _check_split(root, split, ids, f, spk_map=None, mods=("audio", "text", "visual")):
    arr = read_split(root, split)
    assert arr.dialogue_ids == [str(v) for v in ids]
    for i, vid in enumerate(ids):
        d = arr.dialogue(i)
        np.testing.assert_array_equal(d.labels, f["lab"][vid])
        for m in mods:
            np.testing.assert_array_equal(d.features[m], np.stack(f[m][vid]))
        if spk_map is not None:
            np.testing.assert_array_equal(d.speakers, [spk_map(s) for s in f["spk"][vid]])
    return arr


def test_registry_lists_formats():
    names = importer_names()
    for n in ("iemocap-9tuple", "iemocap4-9tuple", "corect-pkl", "meld-10tuple", "meld-9tuple",
              "ada2i-pkl", "gcnet", "dagerc-json"):
        assert n in names


# ------------------------------------------------------------------ IEMOCAP 9-tuple

def _iemocap_file(tmp_path, dims, n_classes=6, speakers="MF", n_train=15, n_test=3,
                  as_set=False, name="IEMOCAP_features.pkl"):
    train = [f"Ses0{1 + i % 4}F_impro{i:02d}" for i in range(n_train)][::-1]  # not sorted
    test = [f"Ses05M_script{i:02d}" for i in range(n_test)]
    f = _dialogues(train + test, dims, n_classes, speakers)
    f["lab"][train[0]][0] = n_classes - 1  # make sure the top class occurs
    tup = ({v: [f"{v}_{j}" for j in range(len(f["lab"][v]))] for v in train + test},
           f["spk"], f["lab"], f["text"], f["audio"], f["visual"], f["sent"],
           set(train) if as_set else train, test)
    path = tmp_path / name
    _dump(path, tup)
    return path, train, test, f


MF = {"M": 0, "F": 1}.__getitem__


@pytest.mark.parametrize("dims", [{"text": 5, "audio": 4, "visual": 6},    # COGMEN 100/100/512
                                  {"text": 5, "audio": 9, "visual": 3}])   # MMGCN 100/1582/342
def test_iemocap_9tuple_round_trip(tmp_path, dims):
    src, train, test, f = _iemocap_file(tmp_path, dims)
    m = run_import("iemocap-9tuple", src, tmp_path / "out", valid_dialogues="4")
    assert m.family == "iemocap6" and m.num_classes == 6
    assert m.label_names == ["hap", "sad", "neu", "ang", "exc", "fru"]
    assert m.modalities == {"audio": dims["audio"], "text": dims["text"], "visual": dims["visual"]}
    assert m.num_speakers == 2 and m.speaker_names == ["M", "F"]
    assert m.splits["train"].dialogues == 11 and m.splits["valid"].dialogues == 4
    assert m.splits["test"].dialogues == 3
    assert "first 4" in m.validation and m.provenance["format"] == "iemocap-9tuple"
    assert m.iemocap4_definition is None and m.has_text
    root = tmp_path / "out"
    _check_split(root, "valid", train[:4], f, MF)
    _check_split(root, "train", train[4:], f, MF)
    arr = _check_split(root, "test", test, f, MF)
    assert arr.texts()[0] == f"{test[0]} utt 0"
    data = MercData(root)
    assert data.meta.dims == m.modalities and data.meta.num_classes == 6
    b = data["train"].batch([0, 1])
    assert b.features["audio"].shape[-1] == dims["audio"]


def test_iemocap_9tuple_default_valid_and_set_and_onehot(tmp_path):
    src, train, test, f = _iemocap_file(tmp_path, {"text": 3, "audio": 2, "visual": 2},
                                        speakers="onehot2", as_set=True)
    m = run_import("iemocap-9tuple", src, tmp_path / "out")
    assert m.splits["valid"].dialogues == 12 and m.splits["train"].dialogues == 3
    assert "sorted" in m.validation
    s = sorted(train)
    onehot = lambda v: int(np.argmax(v))  # noqa: E731  [1,0] = M = 0
    _check_split(tmp_path / "out", "valid", s[:12], f, onehot)
    _check_split(tmp_path / "out", "train", s[12:], f, onehot)


@pytest.mark.parametrize("mode", ["kept", "merged"])
def test_iemocap_four_way(tmp_path, mode):
    src, train, test, f = _iemocap_file(tmp_path, {"text": 3, "audio": 2, "visual": 2})
    m = run_import("iemocap-9tuple", src, tmp_path / "out", four_way=mode, valid_dialogues=3)
    assert m.family == "iemocap4" and m.iemocap4_definition == f"iemocap4-{mode}"
    assert m.label_names == ["hap", "sad", "neu", "ang"]
    arr = read_split(tmp_path / "out", "test")
    for i, vid in enumerate(arr.dialogue_ids):
        lab = np.array(f["lab"][vid])
        if mode == "merged":
            keep = lab != 5
            want = np.where(lab == 4, 0, lab)[keep]
        else:
            keep = lab <= 3
            want = lab[keep]
        d = arr.dialogue(i)
        np.testing.assert_array_equal(d.labels, want)
        np.testing.assert_array_equal(d.features["text"], np.stack(f["text"][vid])[keep])
    assert set(read_split(tmp_path / "out", "train").labels.tolist()) <= {0, 1, 2, 3}


def test_iemocap4_9tuple(tmp_path):
    src, train, test, f = _iemocap_file(tmp_path, {"text": 3, "audio": 2, "visual": 2},
                                        n_classes=4, name="IEMOCAP_features_4.pkl")
    m = run_import("iemocap4-9tuple", src, tmp_path / "out", valid_dialogues=2)
    assert m.family == "iemocap4" and m.iemocap4_definition == "iemocap4-kept"
    assert m.label_names == ["hap", "sad", "neu", "ang"]
    _check_split(tmp_path / "out", "train", train[2:], f, MF)
    # the generic format detects the 4-class file too
    m2 = run_import("iemocap-9tuple", src, tmp_path / "out2", valid_dialogues=2)
    assert m2.family == "iemocap4"
    with pytest.raises(DatasetError, match="already has 4 classes"):
        run_import("iemocap-9tuple", src, tmp_path / "o3", four_way="merged", valid_dialogues=2)


def test_iemocap_errors_name_file_and_shape(tmp_path):
    p = tmp_path / "IEMOCAP_features.pkl"
    _dump(p, tuple({} for _ in range(7)))
    with pytest.raises(DatasetError, match=r"IEMOCAP_features.pkl: expected a 9-tuple .*found a "
                                           r"7-tuple"):
        run_import("iemocap-9tuple", p, tmp_path / "o")
    src, train, test, f = _iemocap_file(tmp_path, {"text": 3, "audio": 2, "visual": 2})
    obj = pickle.load(open(src, "rb"))
    obj[4][train[1]] = obj[4][train[1]][:-1]  # one audio vector short
    _dump(src, obj)
    with pytest.raises(DatasetError, match=r"videoAudio\[.*expected a \[\d+, D\]"):
        run_import("iemocap-9tuple", src, tmp_path / "o2", valid_dialogues=3)
    with pytest.raises(DatasetError, match="four_way"):
        run_import("iemocap-9tuple", src, tmp_path / "o3", four_way="half")
    with pytest.raises(DatasetError, match="unknown option 'bogus'"):
        run_import("iemocap-9tuple", src, tmp_path / "o4", bogus=1)


# ------------------------------------------------------------------ CORECT / COGMEN

def _corect_samples(dims, n, make=dict, prefix="d", n_classes=6):
    f = _dialogues([f"{prefix}{i}" for i in range(n)], dims, n_classes)
    samples = []
    for vid in f["lab"]:
        samples.append(make(vid=vid, speakers=f["spk"][vid], labels=f["lab"][vid],
                            audio=f["audio"][vid], visual=f["visual"][vid], text=f["text"][vid],
                            sentence=f["sent"][vid]))
    return samples, f


def test_corect_pkl_dict_samples(tmp_path):
    dims = {"text": 8, "audio": 3, "visual": 4}
    parts, fs = {}, {}
    for split, n in (("train", 5), ("dev", 2), ("test", 3)):
        parts[split], fs[split] = _corect_samples(dims, n, prefix=split)
    parts["train"][0]["labels"][0] = 5
    fs["train"]["lab"]["train0"][0] = 5
    src = tmp_path / "data_iemocap.pkl"
    _dump(src, parts)
    m = run_import("corect-pkl", src, tmp_path / "out")
    assert m.family == "iemocap6" and m.modalities == {"audio": 3, "text": 8, "visual": 4}
    assert [m.splits[s].dialogues for s in ("train", "valid", "test")] == [5, 2, 3]
    for split, key in (("train", "train"), ("valid", "dev"), ("test", "test")):
        _check_split(tmp_path / "out", split, list(fs[key]["lab"]), fs[key], MF)
    MercData(tmp_path / "out")


def test_corect_pkl_cogmen_sample_objects(tmp_path, monkeypatch):
    class Sample:  # a throwaway stand-in for cogmen.Sample.Sample
        def __init__(self, vid, speaker, label, text, audio, visual, sentence):
            self.vid, self.speaker, self.label = vid, speaker, label
            self.text, self.audio, self.visual, self.sentence = text, audio, visual, sentence
            self.sbert_sentence_embeddings = [np.full(6, len(s), np.float32) for s in sentence]

    Sample.__module__, Sample.__qualname__ = "cogmen.Sample", "Sample"
    mod = types.ModuleType("cogmen.Sample")
    mod.Sample = Sample
    pkg = types.ModuleType("cogmen")
    pkg.Sample = mod
    monkeypatch.setitem(sys.modules, "cogmen", pkg)
    monkeypatch.setitem(sys.modules, "cogmen.Sample", mod)
    dims = {"text": 3, "audio": 2, "visual": 4}
    make = lambda **k: Sample(k["vid"], k["speakers"], k["labels"], k["text"],  # noqa: E731
                              k["audio"], k["visual"], k["sentence"])
    parts, fs = {}, {}
    for split, n in (("train", 4), ("dev", 2), ("test", 2)):
        parts[split], fs[split] = _corect_samples(dims, n, make, prefix=split, n_classes=4)
    src = tmp_path / "data_iemocap_4.pkl"
    _dump(src, parts)
    monkeypatch.delitem(sys.modules, "cogmen")
    monkeypatch.delitem(sys.modules, "cogmen.Sample")
    assert "cogmen.Sample" not in sys.modules
    m = run_import("corect-pkl", src, tmp_path / "out")
    assert m.family == "iemocap4" and m.iemocap4_definition == "iemocap4-kept"
    assert m.modalities == {"audio": 2, "text": 6, "visual": 4}   # SBERT field used for text
    assert m.provenance["options"]["text_source"] == "sbert_sentence_embeddings"
    arr = _check_split(tmp_path / "out", "test", list(fs["test"]["lab"]), fs["test"], MF,
                       mods=("audio", "visual"))
    assert arr.features["text"][0, 0] == len(fs["test"]["sent"]["test0"][0])
    m2 = run_import("corect-pkl", src, tmp_path / "out2", text_field="text")
    assert m2.modalities["text"] == 3
    _check_split(tmp_path / "out2", "train", list(fs["train"]["lab"]), fs["train"], MF)
    assert "cogmen" not in sys.modules


def test_corect_pkl_wrong_layout(tmp_path):
    p = tmp_path / "data_iemocap.pkl"
    _dump(p, {"train": [], "test": []})
    with pytest.raises(DatasetError, match="expected a dict with keys train, dev, test"):
        run_import("corect-pkl", p, tmp_path / "o")


# ------------------------------------------------------------------ MELD tuples

def _meld_ids(n_train, n_test):
    return list(range(n_train)), list(range(1000, 1000 + n_test))


def test_meld_10tuple(tmp_path):
    dims = {"text": 6, "audio": 3, "visual": 4}
    train, test = _meld_ids(20, 4)
    f = _dialogues(train + test, dims, 7, speakers="onehot9")
    tup = ({v: [] for v in train + test}, f["spk"], f["lab"], f["text"], f["audio"],
           f["visual"], f["sent"], train, test, None)
    src = tmp_path / "MELD_features_raw1.pkl"
    _dump(src, tup)
    m = run_import("meld-10tuple", src, tmp_path / "out")
    assert m.family == "meld" and m.num_classes == 7 and m.label_names[0] == "neutral"
    assert m.num_speakers == 9 and m.speaker_scope == "dialogue"
    assert m.splits["valid"].dialogues == 2 and m.splits["train"].dialogues == 18
    assert "first 2" in m.validation
    onehot = lambda v: int(np.argmax(v))  # noqa: E731
    _check_split(tmp_path / "out", "valid", train[:2], f, onehot)
    _check_split(tmp_path / "out", "train", train[2:], f, onehot)
    _check_split(tmp_path / "out", "test", test, f, onehot)
    m2 = run_import("meld-10tuple", src, tmp_path / "out2", valid_dialogues="5", valid_take="last")
    _check_split(tmp_path / "out2", "valid", train[-5:], f, onehot)
    m3 = run_import("meld-10tuple", src, tmp_path / "out3", valid_fraction="0.25",
                    valid_take="shuffle", valid_seed="7")
    ids = list(train)
    __import__("random").Random(7).shuffle(ids)
    assert read_split(tmp_path / "out3", "valid").dialogue_ids == [str(v) for v in ids[:5]]
    assert read_split(tmp_path / "out3", "train").dialogue_ids == \
        [str(v) for v in train if v not in ids[:5]]
    assert m3.splits["valid"].dialogues == 5


def test_meld_9tuple_sentiment(tmp_path):
    dims = {"text": 6, "audio": 3}
    train, test = _meld_ids(10, 3)
    f = _dialogues(train + test, dims, 7, speakers="onehot9")
    senti = {v: [int(x) for x in RNG.integers(0, 3, len(f["lab"][v]))] for v in train + test}
    tup = ({v: [] for v in train + test}, f["spk"], f["lab"], f["text"], f["audio"], f["sent"],
           train, test, senti)
    src = tmp_path / "MELD_features_raw.pkl"
    _dump(src, tup)
    m = run_import("meld-9tuple", src, tmp_path / "out")
    assert m.modalities == {"audio": 3, "text": 6} and "visual" not in m.modalities
    assert m.extra_labels == {"sentiment": ["neutral", "positive", "negative"]}
    arr = _check_split(tmp_path / "out", "test", test, f, mods=("audio", "text"))
    np.testing.assert_array_equal(arr.extra_labels["sentiment"],
                                  np.concatenate([senti[v] for v in test]))
    with pytest.raises(DatasetError, match="absent"):
        MercData(tmp_path / "out", modalities="ATV")
    MercData(tmp_path / "out", modalities="AT")
    with pytest.raises(DatasetError, match="expected a 10-tuple .*found a 9-tuple"):
        run_import("meld-10tuple", src, tmp_path / "o")


# ------------------------------------------------------------------ Ada2I / SPCL

def test_ada2i_iemocap_and_meld(tmp_path):
    dims = {"text": 7, "audio": 5, "visual": 3}
    train = [f"Ses0{1 + i % 4}M_impro{i:02d}" for i in range(14)]
    test = ["Ses05F_a", "Ses05F_b"]
    f = _dialogues(train + test, dims, 6)
    f["lab"][train[0]][0] = 5
    d = {"trainVid": train, "testVid": test, "speaker": f["spk"], "label": f["lab"],
         "text": f["text"], "audio": f["audio"], "visual": f["visual"], "sentence": f["sent"]}
    src = tmp_path / "iemocap.pkl"
    _dump(src, d)
    m = run_import("ada2i-pkl", src, tmp_path / "out")
    assert m.family == "iemocap6" and m.splits["valid"].dialogues == 12
    assert m.modalities == {"audio": 5, "text": 7, "visual": 3}
    _check_split(tmp_path / "out", "valid", train[:12], f, MF)
    _check_split(tmp_path / "out", "train", train[12:], f, MF)
    _check_split(tmp_path / "out", "test", test, f, MF)

    mtrain, mtest = _meld_ids(30, 2)
    g = _dialogues(mtrain + mtest, dims, 7, speakers="ints")
    d = {"trainVid": mtrain, "testVid": mtest, "speakers": g["spk"], "label": g["lab"],
         "text": g["text"], "audio": g["audio"], "visual": g["visual"], "sentence": g["sent"]}
    src = tmp_path / "meld.pkl"
    _dump(src, d)
    m = run_import("ada2i-pkl", src, tmp_path / "outm")
    assert m.family == "meld" and m.splits["valid"].dialogues == 3 and m.num_speakers == 3
    _check_split(tmp_path / "outm", "valid", mtrain[:3], g, int)
    _check_split(tmp_path / "outm", "train", mtrain[3:], g, int)
    del d["label"]
    _dump(src, d)
    with pytest.raises(DatasetError, match="meld.pkl: expected keys .*missing label"):
        run_import("ada2i-pkl", src, tmp_path / "o")


# ------------------------------------------------------------------ GCNet

def _gcnet_iemocap(tmp_path, n_classes=6, name="IEMOCAP_features_raw_6way.pkl"):
    train = [f"Ses0{s}F_impro0{k}" for s in (1, 2, 3, 4) for k in (1, 2)]
    test = ["Ses05M_impro01", "Ses05F_script02"]
    ids, labels, spk, sent, feats = {}, {}, {}, {}, {"audio": {}, "text": {}, "visual": {}}
    root = tmp_path / "features"
    for vid in train + test:
        n = 3 + len(vid) % 2
        ids[vid] = [f"{vid}_{'FM'[j % 2]}{j:03d}" for j in range(n)]
        labels[vid] = [int(x) for x in RNG.integers(0, n_classes, n)]
        spk[vid] = ["FM"[j % 2] for j in range(n)]
        sent[vid] = [f"s{j}" for j in range(n)]
        for m in feats:
            feats[m][vid] = []
        for j, u in enumerate(ids[vid]):
            a = RNG.standard_normal((4, 3)).astype(np.float32)  # [T, D] -> mean
            (root / "wav").mkdir(parents=True, exist_ok=True)
            np.save(root / "wav" / f"{u}.npy", a)
            feats["audio"][vid].append(a.mean(0))
            t = RNG.standard_normal(5).astype(np.float32)
            (root / "deb").mkdir(exist_ok=True)
            np.save(root / "deb" / f"{u}.npy", t)
            feats["text"][vid].append(t)
            (root / "face" / u).mkdir(parents=True, exist_ok=True)
            faces = {s: RNG.standard_normal((2, 2)).astype(np.float32) for s in "FM"}
            for s, x in faces.items():
                np.save(root / "face" / u / f"compress_{s}.npy", x)
            feats["visual"][vid].append(faces[spk[vid][j]].mean(0))
    labels[train[0]][0] = n_classes - 1
    src = tmp_path / name
    _dump(src, (ids, labels, spk, sent, set(train), set(test)))
    f = {"lab": labels, "spk": spk, **feats}
    return src, train, test, f


GC_OPTS = dict(audio_feature="wav", text_feature="deb", visual_feature="face")


def test_gcnet_iemocap(tmp_path):
    src, train, test, f = _gcnet_iemocap(tmp_path)
    m = run_import("gcnet", tmp_path, tmp_path / "out", valid_dialogues=2, **GC_OPTS)
    assert m.family == "iemocap6" and m.modalities == {"audio": 3, "text": 5, "visual": 2}
    s = sorted(train)
    _check_split(tmp_path / "out", "valid", s[:2], f, MF)
    _check_split(tmp_path / "out", "train", s[2:], f, MF)
    _check_split(tmp_path / "out", "test", sorted(test), f, MF)
    assert m.provenance["feature_folders"] == {"audio": "wav", "text": "deb", "visual": "face"}
    # leave-one-session-out fold
    m2 = run_import("gcnet", src, tmp_path / "out2", valid_dialogues=1, test_session=2,
                    **GC_OPTS)
    assert read_split(tmp_path / "out2", "test").dialogue_ids == [v for v in s if "Ses02" in v]
    assert m2.splits["train"].dialogues == 7
    # missing modality folders and files
    with pytest.raises(DatasetError, match="no folder .*manet_UTT"):
        run_import("gcnet", src, tmp_path / "o", audio_feature="wav", text_feature="deb")
    m3 = run_import("gcnet", src, tmp_path / "o3", audio_feature="wav", text_feature="deb",
                    visual_feature="none", valid_dialogues=2)
    assert set(m3.modalities) == {"audio", "text"}
    u = f"{train[3]}_F000"
    (tmp_path / "features" / "deb" / f"{u}.npy").unlink()
    with pytest.raises(DatasetError, match=f"{u}.npy: missing text feature"):
        run_import("gcnet", src, tmp_path / "o4", valid_dialogues=2, **GC_OPTS)
    m5 = run_import("gcnet", src, tmp_path / "o5", valid_dialogues=2, missing_features="zeros",
                    **GC_OPTS)
    assert m5.provenance["missing_features_filled"]["text"] == 1


def test_gcnet_iemocap_4way(tmp_path):
    src, train, test, f = _gcnet_iemocap(tmp_path, 4, "IEMOCAP_features_raw_4way.pkl")
    m = run_import("gcnet", src, tmp_path / "out", valid_dialogues=2, **GC_OPTS)
    assert m.family == "iemocap4" and m.iemocap4_definition == "iemocap4-merged"


def test_gcnet_mosi(tmp_path):
    root = tmp_path / "features"
    splits = {"trainVids": ["vA", "vB", "vC"], "valVids": ["vD"], "testVids": ["vE", "vF"]}
    ids, labels, spk, sent, f = {}, {}, {}, {}, {"audio": {}, "text": {}, "visual": {}}
    for vids in splits.values():
        for vid in vids:
            n = 3
            ids[vid] = [f"{vid}[{j}]" for j in range(n)]
            labels[vid] = [-1.4, 0.0, 2.2] if vid in ("vA", "vE") else list(
                RNG.uniform(-3, 3, n).round(1))
            spk[vid] = [""] * n
            sent[vid] = ["w"] * n
            for m, d in (("audio", 3), ("text", 4), ("visual", 2)):
                (root / m).mkdir(parents=True, exist_ok=True)
                f[m][vid] = [RNG.standard_normal(d).astype(np.float32) for _ in range(n)]
                for u, x in zip(ids[vid], f[m][vid]):
                    np.save(root / m / f"{u}.npy", x)
    src = tmp_path / "CMUMOSI_features_raw_2way.pkl"
    _dump(src, (ids, labels, spk, sent, splits["trainVids"], splits["valVids"],
                splits["testVids"]))
    opts = dict(audio_feature="audio", text_feature="text", visual_feature="visual")
    m = run_import("gcnet", src, tmp_path / "out", **opts)
    assert m.family == "mosi" and m.label_names == ["negative", "positive"]
    assert m.extra_labels == {"sentiment_score": []} and m.num_speakers == 1
    arr = read_split(tmp_path / "out", "test")
    assert arr.dialogue_ids == ["vE", "vF"]
    assert arr.labels[:3].tolist() == [0, IGNORE_INDEX, 1]
    np.testing.assert_allclose(arr.extra_labels["sentiment_score"][:3], [-1.4, 0.0, 2.2])
    np.testing.assert_array_equal(arr.features["visual"][:3], np.stack(f["visual"]["vE"]))
    assert read_split(tmp_path / "out", "valid").dialogue_ids == ["vD"]
    m2 = run_import("gcnet", src, tmp_path / "out2", zero_label="positive", **opts)
    assert read_split(tmp_path / "out2", "test").labels[1] == 1
    MercData(tmp_path / "out")
    _dump(src, (ids, labels, spk, sent, [], []))
    with pytest.raises(DatasetError,
                       match=r"CMUMOSI_features_raw_2way.pkl: expected a 7-tuple .*6-tuple"):
        run_import("gcnet", src, tmp_path / "o", **opts)


# ------------------------------------------------------------------ DAG-ERC JSON

def _dagerc_dir(tmp_path, mm=True, vocab=True):
    root = tmp_path / "IEMOCAP"
    root.mkdir()
    itos = ["neu", "fru", "sad", "ang", "exc", "hap"]   # a vocab order unlike the canonical one
    spk_itos = ["M", "F"]
    data = {}
    for split, nd in (("train", 3), ("dev", 1), ("test", 2)):
        ds = []
        for di in range(nd):
            utts = []
            for ui in range(2 + di):
                t = [float(x) for x in RNG.standard_normal(4)]
                cls = [t, [float(x) for x in RNG.standard_normal(3)],
                       [float(x) for x in RNG.standard_normal(2)]] if mm else t
                u = {"text": f"{split} {di} {ui}", "speaker": spk_itos[(ui + di) % 2],
                     "label": itos[(ui * 2 + di) % 6], "cls": cls}
                if split == "test" and ui == 0 and di == 1:
                    del u["label"]
                utts.append(u)
            ds.append(utts)
        data[split] = ds
        suffix = "roberta_mm" if mm else "roberta"
        (root / f"{split}_data_{suffix}.json.feature").write_text(json.dumps(ds))
    if vocab:
        _dump(root / "label_vocab.pkl", {"stoi": {s: i for i, s in enumerate(itos)},
                                         "itos": itos})
        _dump(root / "speaker_vocab.pkl", {"stoi": {s: i for i, s in enumerate(spk_itos)},
                                           "itos": spk_itos})
    return root, data


def test_dagerc_json_mm(tmp_path):
    root, data = _dagerc_dir(tmp_path)
    m = run_import("dagerc-json", root, tmp_path / "out")
    assert m.family == "iemocap6" and m.label_names == ["hap", "sad", "neu", "ang", "exc", "fru"]
    assert m.modalities == {"audio": 3, "text": 4, "visual": 2}
    assert m.speaker_names == ["M", "F"] and m.has_text
    canon = m.label_names
    for split, key in (("train", "train"), ("valid", "dev"), ("test", "test")):
        arr = read_split(tmp_path / "out", split)
        assert arr.dialogue_ids == [f"{split}_{i}" for i in range(len(data[key]))]
        for i, d in enumerate(data[key]):
            got = arr.dialogue(i)
            np.testing.assert_allclose(got.features["text"], [u["cls"][0] for u in d], rtol=1e-6)
            np.testing.assert_allclose(got.features["audio"], [u["cls"][1] for u in d], rtol=1e-6)
            np.testing.assert_allclose(got.features["visual"], [u["cls"][2] for u in d],
                                       rtol=1e-6)
            want = [canon.index(u["label"]) if "label" in u else IGNORE_INDEX for u in d]
            assert got.labels.tolist() == want
            assert got.speakers.tolist() == [["M", "F"].index(u["speaker"]) for u in d]
    MercData(tmp_path / "out")
    m2 = run_import("dagerc-json", root, tmp_path / "out2", label_order="vocab")
    assert m2.label_names == ["neu", "fru", "sad", "ang", "exc", "hap"]


def test_dagerc_json_text_only_without_vocab(tmp_path):
    root, data = _dagerc_dir(tmp_path, mm=False, vocab=False)
    m = run_import("dagerc-json", root / "train_data_roberta.json.feature", tmp_path / "out")
    assert m.modalities == {"text": 4} and m.provenance["options"]["variant"] == "roberta"
    arr = read_split(tmp_path / "out", "train")
    np.testing.assert_allclose(arr.features["text"][:2], [u["cls"] for u in data["train"][0]],
                               rtol=1e-6)
    with pytest.raises(DatasetError, match="roberta_mm.json.feature"):
        run_import("dagerc-json", root, tmp_path / "o", variant="mm")
