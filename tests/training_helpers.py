"""What several test files train with: records, a config that trains the tiny model in about a second, a DP
config, one record's gradient by its own backward pass (the reference a per-sample gradient is checked
against), and a prepared training run with its LoRA weights as one vector."""

import torch

from ppt_core.data import batching
from ppt_core.dp import privacy, train_config, training

MAX_LENGTH = 24
TEXTS = [
    f"Patient {name} (MRN {1000 + 7 * i}) was admitted for {reason} and discharged on day {i % 5 + 1}."
    for i, (name, reason) in enumerate(
        (n, r)
        for n in ("Ada Stone", "Ben Ortiz", "Cai Lin", "Dee Park", "Eli Ruiz", "Fay Moss")
        for r in ("pneumonia", "sepsis", "a fall", "chest pain", "asthma")
    )
]  # 30 records


def small_config(**overrides) -> train_config.TrainConfig:
    """A config that trains the tiny model in about a second."""
    values = dict(lora_rank=4, lora_alpha=8, lora_targets=["q_proj", "v_proj"], epochs=1.0, learning_rate=1e-2,
                  expected_batch_size=6, physical_batch_size=4, max_length=MAX_LENGTH, seed=0, bf16=False,
                  progress=False)
    values.update(overrides)
    return train_config.TrainConfig(**values)


def dp_config(**overrides) -> privacy.DPConfig:
    values = dict(target_epsilon=8.0, delta=1e-3, max_grad_norm=1.0, accountant="rdp", grad_sample_mode="hooks")
    values.update(overrides)
    return privacy.DPConfig(**values)


def record_gradient(peft_model, dataset, index) -> torch.Tensor:
    """One record's loss gradient over the LoRA parameters, by its own backward pass."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    input_ids, attention_mask, labels = batching.collate(dataset, [index])
    loss = training.record_losses(peft_model(input_ids=input_ids, attention_mask=attention_mask).logits, labels)[0]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def prepared(tiny, config, texts=TEXTS) -> training.Training:
    """The tiny model with LoRA, ready to step through `texts` under `config` (training.prepare)."""
    model, tokenizer = tiny
    torch.manual_seed(config.seed)
    peft_model = training.lora_model(model, config, torch.device("cpu"))
    return training.prepare(peft_model, batching.record_dataset(tokenizer, texts, config.max_length), config)


def lora_vector(trained: training.Training) -> torch.Tensor:
    """Every LoRA weight of a prepared run, as one vector."""
    return torch.cat([p.detach().reshape(-1).clone() for p in trained.lora_params])
