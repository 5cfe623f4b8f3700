"""Preparing what LLMLingua needs on disk, so the compressor never touches a network.

- tiktoken's cl100k_base, which llmlingua loads at start (the compressor
  seam prepares it itself, `workers/compressor.py:tiktoken_cache`).
- The perplexity method's causal LM: SmolLM2-135M-Instruct, read from the
  reasoning model's GGUF and saved as a transformers checkpoint.
- LLMLingua-2's token classifier: fetched from the model hub by an explicit
  command, where the network allows it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from athena_client.errors import ConfigurationError
from athena_inference.config.settings import LLMLINGUA2_MODEL, Settings

# A plain English sentence scores about 3.5 to 5 nats per token on a sound model;
# a model with a random output head scores above 10.
MAX_SANE_LOSS = 7.0


def compressor_lm(settings: Settings, gguf: Path) -> Path:
    """SmolLM2 as a transformers checkpoint, made once from its GGUF."""
    target = settings.compression_lm_dir
    if (target / "config.json").exists():
        return target
    if settings.compression_lm_path is not None:
        raise ConfigurationError(f"ATHENA_COMPRESSION_LM_PATH={target} holds no config.json")
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"[athena] preparing the compressor model from {gguf.name} (once, about a minute)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    # The GGUF has no output matrix: the head shares the token embeddings. Its
    # config still says tie_word_embeddings=false, and a checkpoint saved as is
    # loads with a randomly initialised lm_head, which ranks tokens by noise.
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(partial / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.update(architectures=["LlamaForCausalLM"], tie_word_embeddings=True, torch_dtype="float32")
    (partial / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(partial)
    loss = _loss(partial)
    if loss > MAX_SANE_LOSS:
        raise ConfigurationError(f"the converted compressor model scores loss {loss:.1f} on plain English; its weights are wrong")
    partial.rename(target)
    return target


def _loss(folder: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tokenizer("The meeting moved to Thursday because the lead engineer was travelling.", return_tensors="pt")
    with torch.no_grad():
        return float(model(**ids, labels=ids["input_ids"]).loss)


def fetch_llmlingua2(settings: Settings) -> Path:
    """Download the LLMLingua-2 model from the hub into the models folder (needs a network)."""
    target = settings.llmlingua2_model_dir
    if (target / "config.json").exists():
        return target
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    print(f"[athena] fetching {LLMLINGUA2_MODEL} into {target}", flush=True)
    try:
        snapshot_download(LLMLINGUA2_MODEL, local_dir=target, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise ConfigurationError(
            f"could not fetch {LLMLINGUA2_MODEL}: {exc.__class__.__name__}: {str(exc)[:300]}. "
            f"Without it, compression uses the perplexity method; to add it later, copy the model into {target}"
        ) from None
    return target
