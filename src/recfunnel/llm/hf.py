"""Hugging Face transformers back-end: the model in fp32 PyTorch, optionally with a LoRA adapter.

It exists for what llama.cpp cannot do: apply a PEFT adapter (a fine-tuned reranker) and run
a local HF model folder. A bundled GGUF is de-quantized to fp32 (the same Q4_1 weights the
llama.cpp back-end runs, so both rank alike); de-quantizing takes ~20 s, so the result is
saved once under ``cache_root()/models/hf/`` and later loads read that folder instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recfunnel.core import progress
from recfunnel.core.errors import ConfigError, require
from recfunnel.core.fingerprint import model_fingerprint
from recfunnel.core.paths import cache_root
from recfunnel.llm.base import LLMConfig, Message, TemplatedLLM
from recfunnel.llm.cache import AnswerCache
from recfunnel.llm.models import ALIASES, resolve_gguf

# Nothing may be fetched from the hub at run time: every model is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

log = logging.getLogger(__name__)

BATCH = 8
"""Prompts per forward pass in :meth:`HFLLM._option_logprobs_many`."""
MIN_SHARED = 16
"""Shared prompt tokens worth a separate pass over the prefix (``prefix_cache``)."""
_MARKER = "recfunnel-dequantized.json"
"""Written last into a de-quantized folder: its absence means the folder is incomplete."""


def _import_torch() -> tuple[Any, Any]:
    why = "the hf back-end"
    torch, tf = require("torch", "hf", why), require("transformers", "hf", why)
    progress.third_party_bars()  # no "Loading weights" bar in a log
    return torch, tf


def bf16_is_native(torch: Any, cuda: bool = False) -> bool:
    """Whether bfloat16 matrix products run fast here: on a CUDA device with bf16, or on a
    CPU oneDNN accelerates (AVX-512 and up). Elsewhere (an AVX2-only CPU) torch falls back
    to a scalar kernel ~50x slower than float32, so bf16 there costs time and buys nothing."""
    if cuda:
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _gguf_bar_follows_progress() -> None:
    """transformers' GGUF loader calls tqdm directly (no switch): hand it ours, which is
    quiet off a terminal and under --quiet."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        return
    gguf_utils.tqdm = lambda items, desc="", **_: progress.track(items, desc)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_library_deprecations() -> Iterator[None]:
    """peft and TRL still read transformers' deprecated ``is_gradient_checkpointing`` alias:
    a FutureWarning on every adapter load and training run that no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


class HFLLM(TemplatedLLM):
    """A causal LM run by transformers on CPU (fp32, or bfloat16 where the CPU has it)."""

    backend = "hf"

    def __init__(self, config: LLMConfig, cache: AnswerCache | None = None) -> None:
        super().__init__(config, cache)
        self._torch, self._tf = _import_torch()
        self._model_lock = threading.Lock()  # generate() seeds the global RNG
        torch = self._torch
        torch.set_num_threads(config.n_threads or os.cpu_count() or 1)

        if config.adapter is not None and not Path(config.adapter).expanduser().is_dir():
            # checked before the (slow) base model loads, so a typo fails fast
            raise ConfigError(f"hf adapter folder {config.adapter} does not exist")
        t0 = time.perf_counter()
        model, tok, base_fp = self._load_base(config.model)
        self._id = f"hf:{base_fp}"
        if config.adapter is not None:
            model, adapter_fp = self._apply_adapter(model, config.adapter)
            self._id += f":{adapter_fp}"
        if config.dtype != "float32":
            if not bf16_is_native(torch):
                log.warning(
                    "hf dtype %s: this CPU has no native bfloat16 (torch falls back to a "
                    'scalar kernel, ~50x slower than float32); dtype = "float32" runs '
                    "faster here",
                    config.dtype,
                )
            model = model.to(getattr(torch, config.dtype))
            self._id += f":{config.dtype}"
        if config.prefix_cache:
            self._id += ":prefix-shared"
        model.eval()
        self.model: Any = model
        self.tokenizer: Any = tok
        self.load_seconds = time.perf_counter() - t0
        log.info("hf model %s loaded in %.1f s", config.model, self.load_seconds)

        self._template: str | None = tok.chat_template
        self._bos: str = tok.bos_token or ""
        self._eos: str = tok.eos_token or ""
        self._pad_id: int = (
            tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        )

    # ---- loading ---------------------------------------------------------------------
    def _load_base(self, model: str) -> tuple[Any, Any, str]:
        """(model, tokenizer, fingerprint) of an alias, a GGUF file or an HF model folder."""
        path = Path(model).expanduser()
        if model not in ALIASES and path.is_dir():
            if not (path / "config.json").is_file():
                raise ConfigError(f"hf model folder {path} has no config.json")
            fp = model_fingerprint(path)
            return (*self._from_folder(path), fp)
        if model not in ALIASES and not path.is_file():
            raise ConfigError(
                f"hf model {model!r} not found: expected a bundled alias "
                f"({', '.join(ALIASES)}), a GGUF file or an HF model folder with config.json"
            )
        gguf = resolve_gguf(model)
        fp = model_fingerprint(gguf)
        return (*self._dequantized(gguf, fp), fp)

    def _from_folder(self, folder: Path) -> tuple[Any, Any]:
        tf = self._tf
        tok = tf.AutoTokenizer.from_pretrained(folder)
        mdl = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=self._torch.float32)
        return mdl, tok

    def _dequantized(self, gguf: Path, fp: str) -> tuple[Any, Any]:
        """Load the fp32 copy of ``gguf`` from the cache, building it on first use."""
        target = cache_root() / "models" / "hf" / fp[:16]
        if target.exists():
            try:
                marker = json.loads((target / _MARKER).read_text())
                if marker.get("fingerprint") != fp:
                    raise ValueError(f"it holds {marker.get('fingerprint')}, not {fp}")
                if not any(target.glob("*.safetensors")):
                    raise FileNotFoundError("no weights file")
                return self._from_folder(target)
            except Exception as exc:
                log.warning("de-quantized model %s is unusable (%s); rebuilding it", target, exc)
                _remove(target)

        tf = self._tf
        t0 = time.perf_counter()
        log.info("de-quantizing %s (once; cached in %s)", gguf, target)
        tok = tf.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _gguf_bar_follows_progress()
        extra: dict[str, Any] = {}
        gguf_config = getattr(tf, "GgufConfig", None)
        if gguf_config is not None:  # transformers >= 5.x may keep blocks packed: unpack them all
            extra["quantization_config"] = gguf_config(gguf_file=gguf.name, dequantize=True)
        mdl = tf.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=self._torch.float32, **extra
        )
        quantizer = getattr(mdl, "hf_quantizer", None)
        if quantizer is not None:
            # The weights are plain fp32 now; without this save_pretrained refuses ("gguf is
            # not serializable") and a reload would look for the GGUF file.
            quantizer.remove_quantization_config(mdl)
        log.info("de-quantized in %.1f s", time.perf_counter() - t0)
        self._save_atomically(mdl, tok, target, fp, gguf)
        return mdl, tok

    def _save_atomically(self, mdl: Any, tok: Any, target: Path, fp: str, gguf: Path) -> None:
        """Write into a temp folder beside ``target`` and rename it, so readers never see half
        a model; a failure to cache is logged, not raised (the model in memory is fine)."""
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            mdl.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            info = {"fingerprint": fp, "gguf": str(gguf), "transformers": self._tf.__version__}
            (tmp / _MARKER).write_text(json.dumps(info, indent=1))
            try:
                os.replace(tmp, target)
            except OSError:
                if not (target / _MARKER).is_file():  # not a concurrent writer's finished copy
                    raise
                log.info("another process cached %s first", target)
        except OSError as exc:
            log.warning("could not cache the de-quantized model in %s: %s", target, exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _apply_adapter(self, model: Any, adapter: str) -> tuple[Any, str]:
        folder = Path(adapter).expanduser()
        peft = require("peft", "hf", "a LoRA adapter")
        with quiet_library_deprecations():
            peft_model = peft.PeftModel.from_pretrained(model, str(folder))
        try:  # merged LoRA weights run as fast as the base model
            merged = peft_model.merge_and_unload()
        except (AttributeError, ValueError, NotImplementedError) as exc:
            log.info("adapter %s cannot be merged (%s); running it unmerged", folder, exc)
            merged = peft_model
        return merged, model_fingerprint(folder)

    # ---- identity, rendering, tokens -------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Tokens of a rendered prompt: the template already holds its special tokens, so
        none are added, except a BOS the model wants and the text lacks (as llama.cpp does)."""
        tok = self.tokenizer
        ids: list[int] = list(tok(text, add_special_tokens=False)["input_ids"])
        bos = tok.bos_token_id
        if getattr(tok, "add_bos_token", False) and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def option_token(self, option: str) -> int:
        """The first token of an option as the model would write it after the prompt."""
        ids = self.tokenizer(option, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"option {option!r} has no tokens")
        return int(ids[0])

    def _prompt_tokens(self, messages: Sequence[Message]) -> list[int]:
        tokens = self.tokenize(self.render(messages))
        if len(tokens) > self.config.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens exceeds n_ctx={self.config.n_ctx}")
        return tokens

    # ---- scoring ---------------------------------------------------------------------
    def _last_logprobs(self, prompts: Sequence[list[int]]) -> np.ndarray:
        """Next-token log-probs after each prompt, in one left-padded forward pass.

        Position ids are counted from each prompt's first real token, so a padded prompt
        sees exactly the positions it would alone.
        """
        torch = self._torch
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with self._model_lock, torch.inference_mode():
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=False,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1, :].double()
            return np.asarray(torch.log_softmax(logits, dim=-1).numpy())

    def _option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str]
    ) -> tuple[np.ndarray, int, int]:
        return self._option_logprobs_many([messages], options)[0]

    def _shared_prefix_logprobs(self, prompts: Sequence[list[int]], shared: int) -> np.ndarray:
        """Next-token log-probs after each prompt, the first ``shared`` tokens (common to all)
        run once: their KV cache is repeated for every prompt, whose tails then run in one
        right-padded pass, and each prompt's log-probs are read at its own last token."""
        torch = self._torch
        n, width = len(prompts), max(len(p) for p in prompts) - shared
        ids = torch.full((n, width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((n, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for row, p in enumerate(prompts):
            ids[row, : len(p) - shared] = torch.tensor(p[shared:], dtype=torch.long)
            mask[row, shared : len(p)] = 1
        last = torch.tensor([len(p) - shared - 1 for p in prompts])
        positions = (shared + torch.arange(width))[None, :].repeat(n, 1)
        body = getattr(self.model, self.model.base_model_prefix)
        with self._model_lock, torch.inference_mode():
            head = torch.tensor([prompts[0][:shared]], dtype=torch.long)
            past = body(input_ids=head, use_cache=True).cache
            past.batch_repeat_interleave(n)
            hidden = body(input_ids=ids, attention_mask=mask, position_ids=positions,
                          cache=past, use_cache=True).last_hidden_state  # fmt: skip
            logits = self.model.get_output_embeddings()(hidden[torch.arange(n), last]).double()
            return np.asarray(torch.log_softmax(logits, dim=-1).numpy())

    def _option_logprobs_many(
        self, batch: Sequence[Sequence[Message]], options: Sequence[str]
    ) -> list[tuple[np.ndarray, int, int]]:
        """Prompts sorted by length and scored ``BATCH`` at a time, so padding stays small;
        with ``prefix_cache``, a batch whose prompts share a long prefix runs it once."""
        ids = [self.option_token(o) for o in options]
        prompts = [self._prompt_tokens(m) for m in batch]
        shared = _common_prefix(prompts) if self.config.prefix_cache else 0
        if shared >= MIN_SHARED and len(prompts) > 1:
            lp = self._shared_prefix_logprobs(prompts, shared)
            return [(lp[row, ids], len(p), 0) for row, p in enumerate(prompts)]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[tuple[np.ndarray, int, int] | None] = [None] * len(prompts)
        for start in range(0, len(order), BATCH):
            chunk = order[start : start + BATCH]
            lp = self._last_logprobs([prompts[i] for i in chunk])
            for row, i in enumerate(chunk):
                out[i] = (lp[row, ids], len(prompts[i]), 0)
        return [o for o in out if o is not None]

    # ---- generation ------------------------------------------------------------------
    def _complete(
        self, messages: Sequence[Message], max_tokens: int, temperature: float, stop: Sequence[str]
    ) -> tuple[str, int, int]:
        torch = self._torch
        tokens = self._prompt_tokens(messages)
        ids = torch.tensor([tokens], dtype=torch.long)
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if temperature == 0
            else {"do_sample": True, "temperature": temperature, "top_k": 40, "top_p": 1.0}
        )
        with self._model_lock, torch.inference_mode():
            torch.manual_seed(self.config.seed)  # the same prompt samples the same answer
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                stop_strings=list(stop) or None,
                tokenizer=self.tokenizer if stop else None,
                pad_token_id=self._pad_id,
                **sampling,
            )
        new = [int(t) for t in out[0, len(tokens) :]]
        eos = self.model.generation_config.eos_token_id
        ends = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.eos_token_id}
        while new and new[-1] in ends:  # the end-of-turn token is not part of the answer
            new.pop()
        text: str = self.tokenizer.decode(new, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        return text, len(tokens), len(new)


def _common_prefix(prompts: Sequence[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least its last token to run."""
    shortest = min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return n
