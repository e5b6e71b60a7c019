"""The model card every export writes: README.md in the Hugging Face convention.

YAML front matter (library, base model, tags, pipeline), then what was
trained (tasks, heads, losses, the best dev metrics), how (the training
settings), how to load it in the format it was exported as, and the whole
resolved spec.
"""

from __future__ import annotations

import json
from pathlib import Path

LIBRARY = {"encoder": "transformers", "transformers": "transformers",
           "sentence-transformers": "sentence-transformers", "onnx": "onnx"}
PIPELINE = {"encoder": "feature-extraction", "transformers": "text-classification",
            "sentence-transformers": "sentence-similarity", "onnx": None}


def how_to_load(fmt: str, out: str, pairs: bool, bi: bool, form) -> str:
    """A snippet that runs as written from the export's place (``out``, as the user gave it), with
    what its output means in a comment."""
    if fmt == "encoder":
        return (f'from transformers import AutoModel, AutoTokenizer\n\nmodel = AutoModel.from_pretrained("{out}")\n'
                f'tokenizer = AutoTokenizer.from_pretrained("{out}")\n'
                'states = model(**tokenizer(["A gorgeous film."], return_tensors="pt")).last_hidden_state\n'
                '# states: [batch, tokens, hidden], the shared encoder\'s token states (no task head)')
    if fmt == "transformers":
        meaning = classifier_meaning(form, pairs)
        if pairs:
            return (f'from sentence_transformers import CrossEncoder\n\nmodel = CrossEncoder("{out}")\n'
                    'scores = model.predict([("A man eats.", "Someone is eating.")])\n'
                    f'# {meaning["cross"]}')
        return (f'from transformers import pipeline\n\nclassify = pipeline("text-classification", model="{out}")\n'
                'answers = classify(["A gorgeous film."])\n'
                f'# {meaning["pipeline"]}')
    if fmt == "sentence-transformers":
        note = f"\n# {form.meaning}" if form is not None and form.meaning else ""
        return (f'from sentence_transformers import SentenceTransformer\n\nmodel = SentenceTransformer("{out}")\n'
                'vectors = model.encode(["A man eats.", "Someone is eating."])\n'
                f'# vectors: one row per sentence{", unit length (a dot product is the cosine)" if form is not None and form.normalize else ""}'
                f'{note}')
    names = '("input_ids", "attention_mask", "token_type_ids")'
    if bi:  # a pair encoded apart: the second sentence goes to the *_b inputs
        feed = ('first = tokenizer(["A man eats."], return_tensors="np", return_token_type_ids=True)\n'
                'second = tokenizer(["Someone is eating."], return_tensors="np", return_token_type_ids=True)\n'
                f'feed = {{**{{k: first[k] for k in {names}}}, **{{k + "_b": second[k] for k in {names}}}}}\n')
    elif pairs:
        feed = ('inputs = tokenizer(["A man eats."], ["Someone is eating."], return_tensors="np", '
                'return_token_type_ids=True)\n'
                f'feed = {{k: inputs[k] for k in {names}}}\n')
    else:
        feed = ('inputs = tokenizer(["A gorgeous film."], return_tensors="np", return_token_type_ids=True)\n'
                f'feed = {{k: inputs[k] for k in {names}}}\n')
    return (f'import onnxruntime\nfrom transformers import AutoTokenizer\n\n'
            f'tokenizer = AutoTokenizer.from_pretrained("{out}")\n'
            f'session = onnxruntime.InferenceSession("{out}/model.onnx")\n' + feed +
            'output = session.run(None, feed)[0]\n'
            f'# {form if isinstance(form, str) else "output: the head output"}')


def classifier_meaning(form, pairs: bool) -> dict[str, str]:
    """What pipeline and CrossEncoder answer for a sequence classifier export."""
    names = list(form.label_names) if form is not None else []
    if len(names) == 1 and form.problem_type == "regression":
        return {"cross": "scores: the head's score on the task's scale (mtbert clips it to the label range)",
                "pipeline": "score: a sigmoid of the head's score; call with function_to_apply=\"none\" for the "
                            "score itself"}
    if len(names) == 1:
        return {"cross": f"scores: the logit of {names[0]!r}: above 0 means {names[0]!r} (mtbert's answer)",
                "pipeline": f"[{{'label': {names[0]!r}, 'score': P({names[0]})}}]: above 0.5 means {names[0]!r}"}
    return {"cross": f"scores: one logit per label {names}; the largest is mtbert's answer",
            "pipeline": "[{'label': <one of " + str(names) + ">, 'score': its softmax probability}]: mtbert's answer"}


def model_card(opened, model, fmt: str, task: str | None, form, out: Path, bi: bool = False,
               onnx_output: str | None = None) -> str:
    """``base_model`` is what the encoder says its weights started from (its ``base_model``); ``out``
    is where the export is put (its snippets load from there)."""
    spec, run = opened.spec, opened.run
    best_path = run.path / "best.json"
    best = json.loads(best_path.read_text()) if best_path.is_file() else {}
    scores = best.get("tasks", {})
    base = getattr(model.encoder, "base_model", None)
    pairs = task is not None and spec.tasks[task].data.text_pair is not None
    front = ["---", f"library_name: {LIBRARY[fmt]}"]
    if base:
        front.append(f"base_model: {base}")
    front += ["tags:", "- mtbert", "- multitask"] + [f"- {t}" for t in ([task] if task else [])]
    if PIPELINE[fmt]:
        front.append(f"pipeline_tag: {PIPELINE[fmt]}")
    front.append("---")
    what = {"encoder": "the shared encoder (no task head)",
            "transformers": f"task `{task}` as a sequence classifier",
            "sentence-transformers": f"task `{task}`'s sentence vectors" if task else
                                     "the shared encoder with mean pooling, as sentence vectors",
            "onnx": f"the encoder with task `{task}`'s head" if task else "the encoder (token states)"}[fmt]
    lines = [*front, "", f"# {spec.name}: {what}", "",
             f"Fine-tuned with mtbert from `{base or spec.encoder.name}` on "
             f"{len(spec.tasks)} task(s) at once, then exported as `{fmt}`.", "",
             "## Tasks", "", "| task | head | loss | best dev |", "|---|---|---|---|"]
    for name, t in spec.tasks.items():
        metrics = ", ".join(f"{m} {v:.4f}" for m, v in scores.get(name, {}).items()) or "-"
        mark = " (this export)" if name == task else ""
        lines.append(f"| {name}{mark} | {t.head.name} | {t.loss.name} | {metrics} |")
    if best:
        lines += ["", f"Best evaluation at step {best.get('step')} (epoch {best.get('epoch')}), "
                      f"overall score {best.get('overall', float('nan')):.4f}."]
    tr = spec.train
    lines += ["", "## Training", "",
              f"- encoder `{spec.encoder.name}`, max length {spec.data.max_length}",
              f"- {'epochs ' + str(tr.epochs) if tr.epochs else 'steps ' + str(tr.steps)}, batch size "
              f"{tr.batch_size}, learning rate {tr.lr}, precision {tr.precision}, seed {spec.seed}",
              f"- optimizer `{spec.optimizer.name}`, schedule `{spec.scheduler.name}`, sampler `{spec.sampler.name}`",
              f"- balancer `{spec.balancer.name}`, gradient method `{spec.gradient.name}`",
              f"- adapters: {', '.join(a.name for a in spec.adapters) or 'none'}; regularizers: "
              f"{', '.join(r.name for r in spec.regularizers) or 'none'}"]
    lines += [f"- inputs are truncated at {spec.data.max_length} tokens, as in training (the tokenizer's "
              "model_max_length here says so to every library that loads it)"]
    if fmt == "transformers" and form is not None and len(form.label_names) == 1:
        lines += ["", "One output: `CrossEncoder` returns the head's raw score (the config sets an identity "
                      "activation); `pipeline` applies a sigmoid unless called with `function_to_apply=\"none\"`."]
    if fmt == "sentence-transformers" and form is not None and form.meaning:
        lines += ["", f"The task's score from these vectors: {form.meaning}."]
    shown = onnx_output if fmt == "onnx" else form
    lines += ["", "## How to load", "", "```python", how_to_load(fmt, str(out), pairs, bi, shown), "```",
              "", "## The spec", "", "```toml", run.spec.read_text(encoding="utf-8").strip(), "```", ""]
    return "\n".join(lines)
