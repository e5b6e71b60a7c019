"""The multitask model: one shared encoder, one head per task."""

from __future__ import annotations

from torch import Tensor, nn

from .interfaces import Encoded


class MultitaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module], adapters: list[nn.Module] = ()):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        # Adapter modules also live inside the encoder's slots; holding them
        # here too makes them easy to find (freezing, learning rates).
        self.adapters = nn.ModuleList(adapters)

    def encode(self, task: str, batch: dict[str, Tensor], suffix: str = "",
               inputs_embeds: Tensor | None = None) -> Encoded:
        return self.encoder(batch["input_ids" + suffix], batch["attention_mask" + suffix],
                            batch["token_type_ids" + suffix], task=task, inputs_embeds=inputs_embeds)

    def forward(self, task: str, batch: dict[str, Tensor], inputs_embeds: Tensor | None = None) -> Tensor:
        """The task head's output for a batch (a bi-encoded pair carries ``*_b`` keys)."""
        if "input_ids_b" in batch:
            encoded = (self.encode(task, batch), self.encode(task, batch, "_b"))
        else:
            encoded = self.encode(task, batch, inputs_embeds=inputs_embeds)
        return self.heads[task](encoded)

    def shared_parameters(self) -> list[nn.Parameter]:
        """Trainable parameters every task's loss reaches (what gradient methods treat)."""
        task_specific = {id(p) for m in self.modules() if getattr(m, "task_specific", False)
                         for p in m.parameters()}
        return [p for p in self.encoder.parameters() if p.requires_grad and id(p) not in task_specific]
