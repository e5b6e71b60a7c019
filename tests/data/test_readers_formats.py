"""The parquet and hf_dataset readers: the same split as the TSV of the same rows, trained from a
spec, and malformed files refused with a file-level message and no traceback."""

from __future__ import annotations

import pytest
import torch

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

from mtbert.model.build import build_tasks  # noqa: E402
from mtbert.config.spec import structure_spec, unstructure  # noqa: E402

from helpers import mtbert, toy_data, toy_spec  # noqa: E402


def rows_of(tsv):
    header, *lines = tsv.read_text().splitlines()
    names = header.split("\t")
    return [dict(zip(names, line.split("\t"))) for line in lines]


def columns_of(rows, types):
    return {name: [cast(r[name]) for r in rows] for name, cast in types.items()}


SENT = {"id": str, "sentence": str, "label": int}
PAIRS = {"id": str, "s1": str, "s2": str, "score": float}


@pytest.fixture
def toy(tmp_path):
    """The toy tasks as TSV, as Parquet files and as saved datasets (labels as numbers)."""
    data = toy_data(tmp_path / "data", n=64)
    for name, types in [("sent", SENT), ("pairs", PAIRS)]:
        table = columns_of(rows_of(data / f"{name}.tsv"), types)
        pq.write_table(pa.table(table), data / f"{name}.parquet")
        datasets.Dataset.from_dict(table).save_to_disk(str(data / f"{name}_ds"))
    return data


def spec_for(registry, data, reader, sent, pairs, **train):
    base = unstructure(toy_spec(registry, data, **train))
    tasks = base["tasks"]
    tasks["sent"]["data"].update(reader=reader, train=sent, dev=sent)
    tasks["count"]["data"].update(reader=reader, train=pairs, dev=pairs)
    return structure_spec(base, registry)


def assert_same_splits(a, b):
    for task in a:
        for split in a[task].splits:
            x, y = a[task].splits[split], b[task].splits[split]
            assert list(x.ids) == list(y.ids)
            assert torch.allclose(x.labels.double(), y.labels.double())
            for p, q in zip(x.sequences, y.sequences):
                assert list(p.input_ids) == list(q.input_ids)
                assert list(p.token_type_ids) == list(q.token_type_ids)


@pytest.mark.parametrize("reader,sent,pairs", [("parquet", "sent.parquet", "pairs.parquet"),
                                               ("hf_dataset", "sent_ds", "pairs_ds")])
def test_reads_the_same_split_as_the_tsv_and_trains(registry, tiny_encoder, toy, tmp_path, reader, sent, pairs):
    from mtbert.runs.rundir import RunDir
    from mtbert.training.loop import train

    tsv = build_tasks(toy_spec(registry, toy), registry, tiny_encoder.tokenizer)
    spec = spec_for(registry, toy, reader, sent, pairs, steps=4)
    other = build_tasks(spec, registry, tiny_encoder.tokenizer)
    assert_same_splits(tsv, other)
    best = train(spec, registry, RunDir.create(spec, tmp_path / "run"), progress=False)
    assert set(best["tasks"]) == {"sent", "count"}


def test_a_local_data_directory_loads_through_load_dataset(registry, tiny_encoder, toy):
    (toy / "sent_dir").mkdir()
    (toy / "sent.parquet").rename(toy / "sent_dir" / "train.parquet")
    (toy / "pairs_dir").mkdir()
    (toy / "pairs.parquet").rename(toy / "pairs_dir" / "train.parquet")
    tsv = build_tasks(toy_spec(registry, toy), registry, tiny_encoder.tokenizer)
    other = build_tasks(spec_for(registry, toy, "hf_dataset", "sent_dir", "pairs_dir"), registry,
                        tiny_encoder.tokenizer)
    assert_same_splits(tsv, other)


def run_refused(registry, data, tmp_path, reader, sent, kind="data", in_process=True):
    """``mtbert run`` with the sentiment task read by ``reader`` from ``sent``: refused, one screen.
    In this process through click's runner (the same command and screens, without an interpreter
    start per case), or as the real executable (``in_process=False``: for what reads the
    environment at import, as huggingface_hub reads HF_HUB_OFFLINE)."""
    import tomli_w
    from click.testing import CliRunner

    from mtbert.commands.cli import main

    spec = unstructure(toy_spec(registry, data))
    spec["tasks"]["sent"]["data"].update(reader=reader, train=sent, dev=sent)
    tmp_path.mkdir(parents=True)
    path = tmp_path / "spec.toml"
    path.write_text(tomli_w.dumps({**spec, "out": str(tmp_path / "runs")}))
    if in_process:
        result = CliRunner().invoke(main, ["run", str(path), "--no-progress"])
        code, stderr, everything = result.exit_code, result.stderr, result.output
    else:
        result = mtbert("run", path, "--no-progress")
        code, stderr, everything = result.returncode, result.stderr, result.stderr + result.stdout
    assert code == 2, everything
    assert stderr.startswith(f"mtbert: {kind} error: "), stderr
    assert "Traceback" not in everything and len(stderr.splitlines()) <= 6
    assert "tasks.sent.data.train" in stderr if kind == "spec" else True
    assert not (tmp_path / "runs").exists()
    return stderr


def test_parquet_missing_column_wrong_type_and_a_broken_file(registry, toy, tmp_path):
    table = columns_of(rows_of(toy / "sent.tsv"), SENT)
    pq.write_table(pa.table({"id": table["id"], "text": table["sentence"], "label": table["label"]}),
                   toy / "renamed.parquet")
    message = run_refused(registry, toy, tmp_path / "a", "parquet", "renamed.parquet")
    assert "renamed.parquet:1: no column 'sentence'" in message and "['id', 'label', 'text']" in message
    pq.write_table(pa.table({"id": table["id"], "sentence": table["label"], "label": table["label"]}),
                   toy / "numbers.parquet")
    message = run_refused(registry, toy, tmp_path / "b", "parquet", "numbers.parquet")
    assert "numbers.parquet:1: column 'sentence' holds" in message and "not text" in message
    (toy / "broken.parquet").write_bytes((toy / "sent.parquet").read_bytes()[:100])
    message = run_refused(registry, toy, tmp_path / "c", "parquet", "broken.parquet")
    assert "broken.parquet: not a readable Parquet file" in message


def test_saved_dataset_missing_column_wrong_type_and_a_dataset_dict(registry, toy, tmp_path):
    table = columns_of(rows_of(toy / "sent.tsv"), SENT)
    datasets.Dataset.from_dict({"id": table["id"], "text": table["sentence"], "label": table["label"]}) \
        .save_to_disk(str(toy / "renamed_ds"))
    message = run_refused(registry, toy, tmp_path / "a", "hf_dataset", "renamed_ds")
    assert "renamed_ds:1: no column 'sentence'" in message
    datasets.Dataset.from_dict({"id": table["id"], "sentence": table["sentence"],
                                "label": [float(x) + 0.5 for x in table["label"]]}).save_to_disk(str(toy / "half_ds"))
    message = run_refused(registry, toy, tmp_path / "b", "hf_dataset", "half_ds")
    assert "half_ds:1: label 0.5 is not a class in 0..1" in message or "half_ds:1: label" in message
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(table)}).save_to_disk(str(toy / "dict_ds"))
    # found before any data is read, by the spec's checks
    message = run_refused(registry, toy, tmp_path / "c", "hf_dataset", "dict_ds", kind="spec")
    assert "a DatasetDict with splits ['train']" in message and "dict_ds/train" in message
    message = run_refused(registry, toy, tmp_path / "d", "hf_dataset", "sent.tsv", kind="spec")
    assert "no dataset directory here (a file" in message


def test_a_hub_dataset_offline_is_a_clear_error(registry, toy, tmp_path):
    message = run_refused(registry, toy, tmp_path / "a", "hf_dataset", "hf://nobody/no-such-dataset:train",
                          in_process=False)
    assert "nobody/no-such-dataset: cannot load the dataset" in message and "offline" in message
