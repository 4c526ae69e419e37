"""Listwise SFT: the verbalizer's own ranking loss, on a plain transformers Trainer."""

from __future__ import annotations

from typing import Any

from recfunnel.train.args import Run
from recfunnel.train.config import TrainConfig
from recfunnel.train.examples import Example


def listwise_trainer(
    llm: Any,
    model: Any,
    examples: list[Example],
    cfg: TrainConfig,
    run: Run,
) -> Any:
    """A transformers Trainer whose loss is the verbalizer's own ranking: log-softmax over
    the candidates' letter tokens at the answer position, maximising the mass on the
    listed positives (LlamaRec's objective, with several positives). Every token of the
    loss is spent on ranking -- in the completion objective the reason's ~30 tokens
    outweigh its one letter."""
    import transformers

    torch = llm._torch
    rows = [
        {
            "input_ids": llm.tokenize(llm.render(e.messages)),
            "options": [llm.option_token(label) for label in e.labels],
            "positive": [int(i in e.positives) for i in e.candidates],
        }
        for e in examples
    ]

    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in batch)
        n = max(len(r["options"]) for r in batch)
        ids = torch.full((len(batch), width), llm._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        options = torch.zeros((len(batch), n), dtype=torch.long)
        positive = torch.zeros((len(batch), n), dtype=torch.bool)
        valid = torch.zeros((len(batch), n), dtype=torch.bool)
        for row, r in enumerate(batch):
            k = len(r["options"])
            ids[row, width - len(r["input_ids"]) :] = torch.tensor(r["input_ids"])
            mask[row, width - len(r["input_ids"]) :] = 1
            options[row, :k] = torch.tensor(r["options"])
            positive[row, :k] = torch.tensor(r["positive"], dtype=torch.bool)
            valid[row, :k] = True
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as the hf back-end scores (left pad)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "options": options,
            "positive": positive,
            "valid": valid,
        }

    class ListwiseTrainer(transformers.Trainer):
        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            options, positive, valid = (inputs.pop(k) for k in ("options", "positive", "valid"))
            outputs = model(**inputs, use_cache=False, logits_to_keep=1)
            logits = outputs.logits[:, -1].float().gather(1, options)
            logp = logits.masked_fill(~valid, float("-inf")).log_softmax(-1)
            loss = -logp.masked_fill(~positive, float("-inf")).logsumexp(-1).mean()
            return (loss, outputs) if return_outputs else loss

    return ListwiseTrainer(
        model=model,
        args=run.args(transformers.TrainingArguments, "sft", cfg.sft, remove_unused_columns=False),
        train_dataset=ListDataset(rows),
        data_collator=collate,
    )


class ListDataset:
    """Rows as the Trainer's sampler wants them (len + index); no tokenizer pass needed."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]
