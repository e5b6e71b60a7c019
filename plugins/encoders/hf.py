"""hf: any Hugging Face ``transformers.AutoModel`` as the shared encoder.

For users who have RoBERTa, DeBERTa, ModernBERT ... checkpoints: heads,
losses, samplers, gradient methods and SMART work on it unchanged. It has no
per-layer adapter slots, so adapters that need them (PALs) are refused at
validation; LoRA, which wraps linears by name, works.

``pretrained`` is a hub id or a directory; ``config`` instead builds a
randomly initialised model from a config table (``model_type`` plus the
config's fields), with the tokenizer named by ``tokenizer``. SMART perturbs
this encoder's word embeddings (what ``inputs_embeds`` replaces in
transformers), before positions are added.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from mtbert.toolkit import pretrained as checkpoints
from mtbert.base.errors import CheckpointError, first_line
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Encoded, Encoder


@attrs.frozen
class HfOptions:
    pretrained: str | None = None
    config: dict[str, Any] | None = None  # e.g. { model_type = "roberta", hidden_size = 32, ... }
    tokenizer: str | None = None  # default: the pretrained checkpoint's own

    def check(self):
        if (self.pretrained is None) == (self.config is None):
            yield "pretrained", "give pretrained (a hub id or directory) or config (random weights), not both"
        if self.config is not None and "model_type" not in self.config:
            yield "config", "needs model_type (e.g. \"roberta\")"
        if self.config is not None and self.tokenizer is None:
            yield "tokenizer", "a model built from config needs a tokenizer (a checkpoint name or directory)"


# The attention's query and value projections by model type (module names' last parts), what LoRA
# adapts by default (Hu et al. 2021, section 4.1); a fused projection is named once.
QUERY_VALUE = {
    **dict.fromkeys(["bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "electra", "albert",
                     "ernie", "megatron-bert", "data2vec-text", "roc_bert", "nezha", "xmod", "luke",
                     "layoutlm", "splinter", "rembert", "big_bird", "canine"], ["query", "value"]),
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta-v2": ["query_proj", "value_proj"],
    "deberta": ["in_proj"],
    "modernbert": ["Wqkv"],
    "funnel": ["q_head", "v_head"],
    **dict.fromkeys(["eurobert", "gte", "nomic_bert", "jina_embeddings_v3", "ultrabert", "llama", "mistral", "qwen2",
                     "gemma"], ["q_proj", "v_proj"]),
}


NO_BF16 = {"deberta"}  # model types whose transformers code fails under bf16 autocast
LAYER_PATHS = ("encoder.layer", "encoder.layers", "layers", "transformer.layer")


def find_layers(model: nn.Module) -> nn.ModuleList | None:
    """The transformer layers in order, one module per depth; None for a model without such a list
    (ALBERT: one group of layers shared by every depth)."""
    for path in LAYER_PATHS:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    return None


class HfEncoder(Encoder):
    # Capabilities (read by validation through the registry, declared here once)
    input_embeddings = True  # embed(): the model's input embeddings (what SMART perturbs)
    hf_export = True  # save_hf(): `mtbert export` writes it back as the transformers model it is

    @staticmethod
    def positions(options: HfOptions) -> int | None:
        """The longest input this encoder takes, when its config can be read without the network
        (validation checks data.max_length against it)."""
        if options.config is not None:
            return checkpoints.positions(options.config)
        return checkpoints.local_positions(options.pretrained)

    @staticmethod
    def attention_projections(options: HfOptions) -> list[str] | None:
        """The query and value projections' names for this model type ([] when mtbert does not know
        them; None when the model type cannot be read without the network)."""
        config = options.config if options.config is not None else checkpoints.local_config(options.pretrained)
        if not config or "model_type" not in config:
            return None
        return QUERY_VALUE.get(config["model_type"], [])

    @staticmethod
    def supports_bf16(options: HfOptions) -> bool:
        """DeBERTa (v1) fills a bf16 tensor with float32's minimum inside transformers and fails: fp32 only."""
        config = options.config if options.config is not None else checkpoints.local_config(options.pretrained)
        return (config or {}).get("model_type") not in NO_BF16

    @staticmethod
    def has_pooler(options: HfOptions) -> bool | None:
        """Whether the model type has a pooler (pooling = "pooler" needs one); None when unknown here."""
        config = options.config if options.config is not None else checkpoints.local_config(options.pretrained)
        return checkpoints.has_pooler((config or {}).get("model_type"))

    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.hidden_size = model.config.hidden_size
        # RoBERTa-style models have a single token type; passing 1s would index out of range.
        self.uses_token_types = getattr(model.config, "type_vocab_size", 0) > 1
        self.query_value = QUERY_VALUE.get(model.config.model_type)  # what LoRA adapts by default
        self.layer_slots = self._add_slots(find_layers(model))
        self._running: tuple[Tensor, str | None] | None = None  # the mask and task of the forward in progress

    def _add_slots(self, layers: nn.ModuleList | None) -> list[nn.ModuleList] | None:
        """One slot per layer for per-layer adapters (PALs). transformers' layers cannot take a branch
        inside, so each branch sees the layer's input and its output is added to the layer's output,
        after the layer's last LayerNorm (minbert, like the PALs paper, adds it before that LayerNorm)."""
        if layers is None:
            return None
        slots = [nn.ModuleList() for _ in layers]  # not registered: the branches hold no parameters
        for layer, slot in zip(layers, slots):
            layer.register_forward_pre_hook(self._keep_input(slot), with_kwargs=True)
            layer.register_forward_hook(self._branches(slot))
        return slots

    @staticmethod
    def _keep_input(slot: nn.ModuleList):
        def keep(layer, args, kwargs):
            if len(slot):  # an empty slot (no PALs) keeps nothing
                layer.__dict__["_slot_input"] = args[0] if args else next(
                    kwargs[k] for k in ("hidden_states", "hidden_state", "x") if k in kwargs)
        return keep

    def _branches(self, slot: nn.ModuleList):
        def add(layer, args, output):
            h = layer.__dict__.pop("_slot_input", None)
            if not len(slot) or self._running is None or h is None:
                return output
            mask, task = self._running
            states = output[0] if isinstance(output, tuple) else output
            for branch in slot:
                extra = branch(h, states, mask, task)
                if extra is not None:
                    states = states + extra
            return (states, *output[1:]) if isinstance(output, tuple) else states
        return add

    @property
    def pooler(self) -> nn.Module | None:
        # A property, not an attribute: registering the module twice would
        # duplicate its tensors in the state dict.
        return getattr(self.model, "pooler", None)

    @property
    def layers(self) -> nn.ModuleList:
        found = find_layers(self.model)
        if found is None:
            raise CheckpointError(f"cannot find the transformer layers of {type(self.model).__name__}; "
                                  "trainable = \"last_layers\" is not available for it")
        return found

    @staticmethod
    def has_layer_slots(options: HfOptions) -> bool | None:
        """Per-layer slots (PALs) wherever the layers can be found: one hook pair per layer."""
        return HfEncoder.has_layers(options)

    @staticmethod
    def has_layers(options: HfOptions) -> bool | None:
        """Whether the model's transformer layers (one module per depth) can be found, told by building
        the model on the meta device (no memory, no weights); None when its config is not here."""
        from transformers import AutoConfig, AutoModel

        try:
            if options.config is not None:
                settings = dict(options.config)
                config = AutoConfig.for_model(settings.pop("model_type"), **settings)
            elif checkpoints.local_config(options.pretrained) is not None:
                config = AutoConfig.from_pretrained(str(checkpoints.resolve(options.pretrained)),
                                                    trust_remote_code=False)
            else:
                return None
            with torch.device("meta"):
                model = AutoModel.from_config(config)
        except Exception:  # building it for real says what is wrong
            return None
        return find_layers(model) is not None

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                *, task: str | None = None, inputs_embeds: Tensor | None = None) -> Encoded:
        kwargs: dict[str, Tensor] = {"attention_mask": attention_mask}
        if self.uses_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if inputs_embeds is None:
            kwargs["input_ids"] = input_ids
        else:
            kwargs["inputs_embeds"] = inputs_embeds
        if self.layer_slots and any(len(slot) for slot in self.layer_slots):  # what the slots' branches need
            self._running = (attention_mask[:, None, None, :].bool(), task)
        try:
            out = self.model(**kwargs)
        except (ValueError, TypeError, IndexError, RuntimeError, NotImplementedError) as exc:
            if isinstance(exc, torch.OutOfMemoryError):  # the machine's, not the model type's: said elsewhere
                raise
            raise CheckpointError(f"the {self.model.config.model_type} model failed inside transformers: "
                                  f"{first_line(exc)}\n  fix: this model type may not take mtbert's batches "
                                  "(dynamic padding, token types); try another encoder") from None
        finally:
            self._running = None
        return Encoded(out.last_hidden_state, attention_mask, getattr(out, "pooler_output", None))

    def save_architecture(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))

    def save_hf(self, directory: Path) -> str:
        """The wrapped transformers model saves itself (its own config); returns its model_type."""
        self.model.save_pretrained(str(directory))
        return self.model.config.model_type


def build_hf(options: HfOptions, *, restore: Path | None = None) -> HfEncoder:
    """Any Hugging Face AutoModel (RoBERTa, DeBERTa, ModernBERT ...) as the encoder."""
    from transformers import AutoConfig, AutoModel

    try:  # never a checkpoint's own code: its config is checked first, and transformers told so
        if restore is not None:
            checkpoints.read_config(Path(restore))
            model = AutoModel.from_config(AutoConfig.from_pretrained(str(restore), trust_remote_code=False))
            return _with_base(HfEncoder(model, checkpoints.load_tokenizer(Path(restore))), options)
        if options.config is not None:
            settings = dict(options.config)
            checkpoints.check_config(settings, "encoder.config")
            model = AutoModel.from_config(AutoConfig.for_model(settings.pop("model_type"), **settings))
        else:
            source = checkpoints.resolve(options.pretrained)
            checkpoints.read_config(source)
            model = AutoModel.from_pretrained(str(source), trust_remote_code=False)
    except CheckpointError:
        raise
    except Exception as exc:  # transformers' own refusal (a config it cannot build, funnel's layer count ...)
        raise CheckpointError(f"cannot build the Hugging Face model: {type(exc).__name__}: {first_line(exc, 300)}\n"
                              "  fix: check the encoder's config (or checkpoint) against what transformers "
                              "expects for that model type") from None
    tokenizer_source = options.tokenizer or options.pretrained
    return _with_base(HfEncoder(model, checkpoints.load_tokenizer(checkpoints.resolve(tokenizer_source))), options)


def _with_base(encoder: HfEncoder, options: HfOptions) -> HfEncoder:
    """What the weights started from, for model cards (none for a model built from a config)."""
    encoder.base_model = checkpoints.hub_name(options.pretrained) if options.pretrained else None
    return encoder


@hookimpl
def register_encoders(register):
    register("hf", build_hf, options=HfOptions, declares=HfEncoder)
