import gzip
import json
from collections import Counter

import numpy as np
import pytest

from poolattn.training.data import Example, MixedBatchSampler, SourceConfig, load_sources, pack_batches, read_jsonl


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows(n, prefix="q", negative=True):
    return [{"query": f"{prefix} {i}", "positive": f"{prefix} pos {i}",
             **({"negative": f"{prefix} neg {i}"} if negative else {})} for i in range(n)]


@pytest.mark.parametrize("bad, message", [
    ('{"query": "a", "positive": ', "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"query": "a"}', "missing field 'positive'"),
    ('{"query": "  ", "positive": "b"}', "field 'query' is empty"),
    ('{"query": "a", "positive": "b", "negative": ""}', "field 'negative' is empty"),
    ('{"query": "a", "positive": 3}', "must be a string"),
])
def test_bad_line_names_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "s.jsonl", [rows(1)[0], "", bad])
    with pytest.raises(ValueError, match=message) as err:
        read_jsonl(path)
    assert f"{path}:3" in str(err.value)


def test_gzip_columns_and_instruction(tmp_path):
    path = tmp_path / "s.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"anchor": "a", "pos": "b", "negative": None, "instruction": "Find it"}) + "\n")
        f.write(json.dumps({"anchor": "c", "pos": "d"}) + "\n")
    ex = read_jsonl(path, columns={"query": "anchor", "positive": "pos"}, instruction="Default")
    assert ex == [Example("a", "b", None, "Find it"), Example("c", "d", None, "Default")]


def test_folder_sources_and_weights(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    write(folder / "big.jsonl", rows(30, "b"))
    write(folder / "small.jsonl", rows(10, "s"))
    (folder / "notes.txt").write_text("ignored")
    sources = load_sources([SourceConfig(path="train")], data_dir=tmp_path)  # resolved under data_dir
    assert [s.name for s in sources] == ["big", "small"]
    assert [round(s.weight, 3) for s in sources] == [0.75, 0.25]
    extra = write(tmp_path / "extra.jsonl", rows(10, "e"))
    sources = load_sources([SourceConfig(path=str(folder), weight=1), SourceConfig(path=str(extra), weight=3)])
    assert {s.name: round(s.weight, 4) for s in sources} == {"big": 0.1875, "small": 0.0625, "extra": 0.75}
    with pytest.raises(ValueError, match="every training source a weight, or none"):
        load_sources([SourceConfig(path=str(folder), weight=1), SourceConfig(path=str(extra))])
    with pytest.raises(ValueError, match="unique"):
        load_sources([SourceConfig(path=str(extra)), SourceConfig(path=str(extra))])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_sources([SourceConfig(path="missing.jsonl")], data_dir=tmp_path)


def test_hub_dataset_through_datasets(monkeypatch):
    import datasets

    table = datasets.Dataset.from_list([{"anchor": "a", "positive": "b"}, {"anchor": "c", "positive": ""}])
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or table)
    spec = SourceConfig(path="org/pairs", subset="en", columns={"query": "anchor"})
    with pytest.raises(ValueError, match=r"org/pairs\[en:train\] row 1: field 'positive' is empty"):
        load_sources([spec])
    assert calls[0] == (("org/pairs", "en"), {"split": "train"})


def test_pack_batches_has_no_duplicate_texts():
    ex = [Example(f"q{i % 7}", f"p{i % 11}") for i in range(200)]
    batches = pack_batches(np.random.default_rng(0).permutation(len(ex)), ex, 5)
    assert batches and all(len(b) == 5 for b in batches)
    for b in batches:
        texts = [ex[i].query for i in b] + [ex[i].positive for i in b]
        assert len(set(texts)) == len(texts)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) and len(flat) >= 150  # few rows lost to the constraint


def _sources(tmp_path):
    write(tmp_path / "a.jsonl", rows(40, "a"))
    write(tmp_path / "b.jsonl", rows(20, "b", negative=False))
    return load_sources([SourceConfig(path=str(tmp_path / "a.jsonl"), weight=3),
                         SourceConfig(path=str(tmp_path / "b.jsonl"), weight=1)])


def test_sampler_one_source_per_batch_deterministic_and_resumable(tmp_path):
    sources = _sources(tmp_path)
    s1 = MixedBatchSampler(sources, batch_size=8, seed=1)
    batches = [s1.next_batch() for _ in range(40)]  # several epochs of both sources
    for b in batches:
        assert len(b.examples) == 8 and {e.query.split()[0] for e in b.examples} == {b.source}
    counts = Counter(b.source for b in batches)
    assert counts["a"] > counts["b"] > 0
    s2 = MixedBatchSampler(sources, batch_size=8, seed=1)
    assert [b.examples for b in (s2.next_batch() for _ in range(40))] == [b.examples for b in batches]
    assert MixedBatchSampler(sources, 8, seed=2).next_batch().examples != batches[0].examples

    s3 = MixedBatchSampler(sources, batch_size=8, seed=1)
    for _ in range(13):
        s3.next_batch()
    state = json.loads(json.dumps(s3.state_dict()))  # survives a JSON round trip
    s4 = MixedBatchSampler(sources, batch_size=8, seed=1)
    s4.load_state_dict(state)
    assert [s4.next_batch().examples for _ in range(27)] == [b.examples for b in batches[13:]]
    with pytest.raises(ValueError, match="does not match"):
        MixedBatchSampler(sources, batch_size=4, seed=1).load_state_dict(state)


def test_sampler_rejects_too_small_source(tmp_path):
    write(tmp_path / "tiny.jsonl", [{"query": "same", "positive": f"p{i}"} for i in range(10)])
    with pytest.raises(ValueError, match="'tiny' has 10 rows, too few distinct"):
        MixedBatchSampler(load_sources([SourceConfig(path=str(tmp_path / "tiny.jsonl"))]), batch_size=2)


@pytest.mark.integration
def test_shared_training_data_loads(data_dir):
    tasks = json.loads((data_dir / "tasks.json").read_text())["train"]
    sources = load_sources([SourceConfig(path="train")], data_dir=data_dir)
    assert {s.name: len(s.examples) for s in sources} == {k: v["rows"] for k, v in tasks.items()}
    assert {s.name: sum(e.negative is not None for e in s.examples) for s in sources} == \
        {k: v["with_negative"] for k, v in tasks.items()}
    sampler = MixedBatchSampler(sources, batch_size=64, seed=0)
    for _ in range(20):
        b = sampler.next_batch()
        assert len({e.positive for e in b.examples}) == 64


def test_source_instruction_and_sides(tmp_path):
    path = tmp_path / "nli.jsonl"
    path.write_text(json.dumps({"query": "a", "positive": "b"}) + "\n"
                    + json.dumps({"query": "c", "positive": "d", "instruction": "Own"}) + "\n")
    (src,) = load_sources([SourceConfig(path=str(path), instruction="Retrieve semantically similar text.",
                                        symmetric=True)])
    assert [(e.instruction, e.symmetric) for e in src.examples] == [("Retrieve semantically similar text.", True),
                                                                    ("Own", True)]
    (plain,) = load_sources([SourceConfig(path=str(path))])
    assert [(e.instruction, e.symmetric) for e in plain.examples] == [(None, False), ("Own", False)]


def test_truncated_gzip_and_non_utf8_name_file_and_line(tmp_path):
    good = tmp_path / "s.jsonl.gz"
    with gzip.open(good, "wt") as f:
        for i in range(2000):
            f.write(json.dumps({"query": f"q{i} " * 20, "positive": f"p{i}"}) + "\n")
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"cut\.jsonl\.gz:\d+: truncated or corrupt compressed file"):
        read_jsonl(cut)
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"query": "a", "positive": "b"}\n{"query": "caf\xe9", "positive": "b"}\n')
    with pytest.raises(ValueError, match=r"l\.jsonl:2: not UTF-8 text"):
        read_jsonl(latin)
