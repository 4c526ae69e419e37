"""Fine-tuning a reranker: training lists with shuffled candidates, then SFT and DPO."""
