"""The multitask model: one shared encoder, one head per task."""

from __future__ import annotations

from torch import Tensor, nn

from mtbert.plugin.interfaces import Encoded


class MultitaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module], adapters: list[nn.Module] = ()):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        # Adapters that installed themselves inside the encoder (layer slots,
        # wrapped linears) are held here too, so they are easy to find for
        # freezing; those with a ``transform`` method act on the encoder's
        # output, shared by all heads (e.g. report 002's BiLSTM).
        self.adapters = nn.ModuleList(adapters)
        self.on_top = [a for a in adapters if hasattr(a, "transform")]

    def encode(self, task: str, batch: dict[str, Tensor], suffix: str = "",
               inputs_embeds: Tensor | None = None, representation: list[Tensor] | None = None) -> Encoded:
        encoded = self.encoder(batch["input_ids" + suffix], batch["attention_mask" + suffix],
                               batch["token_type_ids" + suffix], task=task, inputs_embeds=inputs_embeds)
        if representation is not None:
            representation.append(encoded.states)
        for adapter in self.on_top:
            encoded = adapter.transform(encoded, task)
        return encoded

    def forward(self, task: str, batch: dict[str, Tensor], inputs_embeds=None,
                representation: list[Tensor] | None = None) -> Tensor:
        """The task head's output for a batch.

        A bi-encoded pair carries ``*_b`` keys and is encoded in two passes;
        ``inputs_embeds`` (what SMART perturbs) is then a pair of tensors.
        ``representation``, when given, receives the encoder's last-layer
        token states of each pass (before adapters that act on the output):
        the shared representation every task's loss depends on.
        """
        if "input_ids_b" in batch:
            first, second = inputs_embeds if inputs_embeds is not None else (None, None)
            encoded = (self.encode(task, batch, "", first, representation),
                       self.encode(task, batch, "_b", second, representation))
        else:
            encoded = self.encode(task, batch, inputs_embeds=inputs_embeds, representation=representation)
        return self.heads[task](encoded)

    def embed(self, batch: dict[str, Tensor]):
        """The input embeddings of a batch: one tensor, or a pair for a bi-encoded pair."""
        embed = self.encoder.embed
        if "input_ids_b" in batch:
            return (embed(batch["input_ids"], batch["token_type_ids"]),
                    embed(batch["input_ids_b"], batch["token_type_ids_b"]))
        return embed(batch["input_ids"], batch["token_type_ids"])

    def named_shared_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Trainable parameters shared by all tasks (what gradient methods treat):
        everything but the heads and modules marked ``task_specific`` (e.g. PALs)."""
        own = {id(p) for m in [self.heads, *(m for m in self.modules() if getattr(m, "task_specific", False))]
               for p in m.parameters()}
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad and id(p) not in own]
