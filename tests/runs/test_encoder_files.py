"""What an encoder directory (a pretrained checkpoint, or a run's checkpoint/encoder/) may not do:
run its own code, describe a model no one trained, or lack the vocabulary its texts need."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from mtbert.base.errors import CheckpointError
from mtbert.commands.cli import main
from mtbert.toolkit import pretrained

from helpers import finished_toy_run


@pytest.fixture(scope="module")
def finished(registry, tmp_path_factory):
    return finished_toy_run(registry, tmp_path_factory.mktemp("encoder-files"))


def copy_with(run, tmp_path, edit):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    edit(copy / "checkpoint" / "encoder")
    return copy


def edit_config(**changes):
    def edit(encoder):
        config = json.loads((encoder / "config.json").read_text())
        config.update(changes)
        (encoder / "config.json").write_text(json.dumps(config))
    return edit


def remove_vocabulary(encoder):
    for name in ("tokenizer.json", "vocab.txt"):
        (encoder / name).unlink(missing_ok=True)


CASES = {
    "no tokenizer files": (remove_vocabulary, "holds no tokenizer"),
    "vocab_size -1": (edit_config(vocab_size=-1), "vocab_size = -1 is not a size"),
    "vocab_size 1e12": (edit_config(vocab_size=10 ** 12), "is not a size"),
    "hidden_size a string": (edit_config(hidden_size="32"), "hidden_size = '32' is not a size"),
    "dropout 5": (edit_config(hidden_dropout_prob=5), "hidden_dropout_prob = 5 is not a dropout rate"),
    "heads that do not divide": (edit_config(num_attention_heads=3), "is not a multiple of num_attention_heads 3"),
    "auto_map": (edit_config(auto_map={"AutoModel": "modeling.Evil"}), "never runs a checkpoint's code"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["predict", "export"])
def test_a_bad_encoder_directory_is_refused(finished, tmp_path, case, command):
    run, data = finished
    edit, expected = CASES[case]
    copy = copy_with(run, tmp_path, edit)
    out = tmp_path / "out"
    args = (["predict", str(copy), "--task", "sent", "--input", str(data / "sent.tsv"), "--output", str(out)]
            if command == "predict" else ["export", str(copy), str(out)])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_remote_code_is_never_run(tmp_path, registry):
    """A directory whose config asks transformers for its own modeling file: refused before anything
    imports it (the file would leave a mark)."""
    from mtbert.model.build import make
    from mtbert.config.spec import structure_component

    source = pretrained.embedded_path()
    evil = tmp_path / "evil"
    evil.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, evil / name)
    config = json.loads((source / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling.EvilConfig", "AutoModel": "modeling.Evil"}
    (evil / "config.json").write_text(json.dumps(config))
    mark = tmp_path / "ran"
    (evil / "modeling.py").write_text(f"open({str(mark)!r}, 'w').write('ran')\n")
    for encoder in ({"name": "hf", "pretrained": str(evil)}, {"name": "minbert", "pretrained": str(evil)}):
        with pytest.raises(CheckpointError, match="never runs a checkpoint's code"):
            make(registry, structure_component("encoders", encoder, registry))
    assert not mark.exists()


def test_config_checks_by_hand():
    pretrained.check_config({"vocab_size": 30522, "hidden_size": 384, "num_attention_heads": 12,
                             "hidden_dropout_prob": 0.1, "classifier_dropout": None}, "c")
    for bad in ({"vocab_size": True}, {"num_hidden_layers": 0}, {"attention_probs_dropout_prob": 1.0},
                {"hidden_dropout_prob": "0.1"}, {"max_position_embeddings": -512}):
        with pytest.raises(CheckpointError):
            pretrained.check_config(bad, "c")
    assert pretrained.positions({"max_position_embeddings": 512}) == 512
    assert pretrained.positions({"max_position_embeddings": 514, "model_type": "roberta"}) == 512
    assert pretrained.positions({"max_position_embeddings": 512, "position_embedding_type": "rotary"}) is None
    assert pretrained.positions({}) is None
