"""bilstm: a shared bidirectional LSTM over the encoder's token states (report 002).

Report 002 (seed 002, section 4.3) adds "a bi-LSTM layer after minBERT as a
common layer" before task-specific heads with dropout. Here, for the token
states x_1..x_n of one sequence (its real tokens only),

    s_i = [LSTM_fwd(x_1..x_i) ; LSTM_bwd(x_i..x_n)],    Encoded.states <- dropout(s) * mask

with ``hidden`` units per direction (default encoder.hidden_size // 2) and
``layers`` stacked layers, so the output keeps the encoder's width (the heads
are built with that width; 2 * hidden must equal it). Sequences are packed
by their lengths (from the attention mask; padding is on the right), so
padding never reaches a real token's state, and padded positions of the
output are zero. The same LSTM serves every task.

``Encoded.pooled`` (BERT's pooler output) passes through unchanged: a head
with ``pooling = "pooler"`` bypasses the LSTM; use ``"cls"`` or ``"mean"``.
"""

from __future__ import annotations

import attrs
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mtbert.base.errors import PluginError
from mtbert.plugin.hookspecs import hookimpl
from mtbert.plugin.interfaces import Encoded
from mtbert.plugin.structure import at_least, probability


@attrs.frozen
class BiLstmOptions:
    hidden: int | None = attrs.field(default=None, validator=at_least(1))  # per direction; None: hidden_size // 2
    layers: int = attrs.field(default=1, validator=at_least(1))
    dropout: float = attrs.field(default=0.0, validator=probability)  # on the output, and between stacked layers


class BiLstm(nn.Module):
    """Token states -> BiLSTM states of the same width; applied by the model before the heads."""

    def __init__(self, width: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.lstm = nn.LSTM(width, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)

    def forward(self, states, mask):
        lengths = mask.sum(dim=1).clamp(min=1).to("cpu", non_blocking=False)
        packed = pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=states.shape[1])
        return self.dropout(out) * mask.unsqueeze(-1).to(out.dtype)

    def transform(self, encoded: Encoded, task: str | None = None) -> Encoded:
        return encoded._replace(states=self(encoded.states, encoded.mask))


def build_bilstm(options: BiLstmOptions, encoder, tasks: list[str]) -> BiLstm:
    """A shared bidirectional LSTM over the token states, before the heads (report 002)."""
    width = encoder.hidden_size
    hidden = options.hidden if options.hidden is not None else width // 2
    if 2 * hidden != width:
        fix = (f"leave hidden unset (it defaults to {width // 2})" if width % 2 == 0
               else "no hidden fits an odd width")
        raise PluginError(f"adapter \"bilstm\": its output (2 x hidden = {2 * hidden}) must keep the encoder's "
                          f"width {width}, which the heads are built for; {fix}")
    return BiLstm(width, hidden, options.layers, options.dropout)


@hookimpl
def register_adapters(register):
    register("bilstm", build_bilstm, options=BiLstmOptions)
