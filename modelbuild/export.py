"""Export the Hugging Face encoder to ONNX fp32 with dynamic batch and sequence axes."""

from __future__ import annotations

from pathlib import Path

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17
DUMMY_BATCH = 2
DUMMY_SEQ = 16


def export_onnx(source_dir: Path, out_path: Path) -> Path:
    """Export with the legacy TorchScript exporter: offline, deterministic, fast on 2 cores."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source_dir), attn_implementation="eager")
    model.eval()
    dummy = torch.ones((DUMMY_BATCH, DUMMY_SEQ), dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    dynamic_axes = {name: axes for name in (*INPUT_NAMES, OUTPUT_NAME)}

    class _Encoder(torch.nn.Module):
        """Return only the token embeddings, so the graph has one named output."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            out = self.inner(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    with torch.no_grad():
        torch.onnx.export(
            _Encoder(),
            (dummy, dummy, torch.zeros_like(dummy)),
            str(out_path),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return out_path
