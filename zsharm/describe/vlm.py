"""Vision-language model backends for stage 1: each turns (pictures + an instruction) into one text answer.

Two backends, one method: `ask(parts, seed) -> str`, where `parts` is the user turn as a list of strings and
PIL images in reading order. Neither backend checks the answer: `zsharm.describe.description` parses it strictly and asks
again when it is malformed.

- `TransformersVLM`: a local open model through transformers (`AutoProcessor` + `AutoModelForImageTextToText`,
  the weights fetched from the Hugging Face hub on first use). The default, `DEFAULT_VLM`, is SmolVLM-Instruct
  (HuggingFaceTB, Apache-2.0, 2.25 B parameters, 4.5 GB in bfloat16). Why it: open weights under a permissive
  licence; an instruction-tuned chat model that takes several images in one turn; small enough to sit beside
  Stable Diffusion 2 (about 2.6 GB in fp16) on a 24 GB GPU and to run on a CPU (slowly, ~9 GB of RAM in fp32);
  and its processor (Idefics3) needs no torchvision, which zsharm does not depend on. The Qwen2/2.5/3-VL
  processors in transformers 5 carry a video processor that needs torchvision; with torchvision installed
  they work here unchanged (`--vlm Qwen/Qwen3-VL-2B-Instruct`) and follow formats better.
- `OpenAIChatVLM`: any OpenAI-compatible chat-completions endpoint (OpenAI, Gemini's compatible endpoint,
  vLLM, Ollama, llama.cpp server...) over plain HTTP with the standard library. The key is read from an
  environment variable, never from the command line; timeouts and 5xx answers are retried with exponential
  backoff.
"""

from __future__ import annotations

import base64
import gc
import http.client
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from zsharm.errors import ZsharmError, one_line

DEFAULT_VLM = "HuggingFaceTB/SmolVLM-Instruct"
# The authors sampled Gemini at temperature 0.3 with top-k 64.
TEMPERATURE = 0.3
TOP_K = 64
# An answer in the expected format is about 15-30 tokens; anything longer is wrong anyway.
MAX_NEW_TOKENS = 48
# Tokens that end an assistant turn in common chat templates (SmolVLM, Qwen, Llama 3, Gemma, Phi).
_END_OF_TURN = ("<end_of_utterance>", "<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
_LOADED: dict = {}  # (model, device, dtype) -> (processor, model): one copy per process




class TransformersVLM:
    """A local vision-language model through transformers; loaded on the first `ask`, kept for the process.

    model: a Hugging Face hub id or a local folder with a processor (with a chat template) and an
    image-text-to-text model. device/dtype default to CUDA in bfloat16 (float16 where bf16 is missing), Apple
    MPS in float16, else CPU in float32. Sampling follows the authors: temperature 0.3, top-k 64.
    `generate_kwargs` go to `model.generate` as they are (a logits processor, a different max_new_tokens...).
    """

    kind = "transformers"

    def __init__(self, model: str = DEFAULT_VLM, device=None, dtype=None, max_new_tokens: int = MAX_NEW_TOKENS,
                 temperature: float = TEMPERATURE, top_k: int = TOP_K, processor_kwargs: dict | None = None,
                 generate_kwargs: dict | None = None):
        self.model = str(model)
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.processor_kwargs = processor_kwargs
        self.generate_kwargs = dict(generate_kwargs or {})

    def check_available(self) -> None:
        """Refuse, before any model loads, a hub model that is not in the local cache while downloads are off:
        it would otherwise be found missing only once Stable Diffusion is loaded, once per image."""
        from zsharm.cache import offline
        if Path(self.model).expanduser().is_dir() or not offline():
            return
        from huggingface_hub import try_to_load_from_cache
        try:
            cached = try_to_load_from_cache(self.model, "config.json")
        except Exception:  # not a hub id at all: loading it says what is wrong in its own words
            return
        if not isinstance(cached, str):
            raise ZsharmError(f"the VLM {self.model!r} is not in the Hugging Face cache and downloads are off "
                              f"(ZSHARM_OFFLINE / HF_HUB_OFFLINE): fetch it once online, or give a local folder "
                              f"with --vlm, an endpoint with --base-url, or the prompts with --source/--target")

    def load(self):
        """(processor, model), loading them on first use."""
        device, dtype = self._placement()
        key = (self.model, str(device), str(dtype))
        if key not in _LOADED:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            try:
                processor = AutoProcessor.from_pretrained(self.model)
                model = AutoModelForImageTextToText.from_pretrained(self.model, dtype=dtype)
            except Exception as error:  # hub, file and config problems come as many exception types
                problem = f"{one_line(error)}{self._hint(error)}"
                raise ZsharmError(f"cannot load the VLM {self.model!r}: {problem}") from None
            if getattr(processor, "chat_template", None) is None:
                raise ZsharmError(f"the VLM {self.model!r} has no chat template: give an instruction-tuned model")
            model.to(device).eval()
            _LOADED[key] = (processor, model)
        return _LOADED[key]

    def unload(self) -> None:
        """Free the model (e.g. to give its GPU memory to the diffusion stage)."""
        import torch

        device, dtype = self._placement()
        if _LOADED.pop((self.model, str(device), str(dtype)), None) is None:
            return
        gc.collect()  # the model's modules may sit in reference cycles; the cache below frees only what is gone
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def ask(self, parts: list, seed: int = 0) -> str:
        """The model's answer to one user turn (strings and PIL images in order), sampled with `seed`."""
        import torch

        processor, model = self.load()
        content, images = [], []
        for part in parts:
            if isinstance(part, Image.Image):
                content.append({"type": "image"})
                images.append(part.convert("RGB"))
            else:
                content.append({"type": "text", "text": str(part)})
        messages = [{"role": "user", "content": content}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        options = self.processor_kwargs if self.processor_kwargs is not None else _processor_options(processor)
        inputs = processor(text=[prompt], images=[images] if images else None, return_tensors="pt", **options)
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        settings = dict(max_new_tokens=self.max_new_tokens, do_sample=self.temperature > 0, top_p=1.0)
        if self.temperature > 0:
            settings.update(temperature=self.temperature, top_k=self.top_k)
        stops = self._stop_ids(processor.tokenizer, model)
        if stops:
            settings["eos_token_id"] = stops
        pad = processor.tokenizer.pad_token_id
        settings["pad_token_id"] = pad if pad is not None else stops[0] if stops else None
        settings.update(self.generate_kwargs)
        devices = [model.device.index or 0] if model.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):  # seeding here leaves the caller's RNG alone
            torch.manual_seed(seed)
            output = model.generate(**inputs, **settings)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        return processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()

    def _placement(self):
        import torch

        device = torch.device(self.device) if self.device is not None else _default_device()
        dtype = self.dtype
        if isinstance(dtype, str):
            dtype = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16,
                     "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}[dtype]
        if dtype is None:
            if device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            else:
                dtype = torch.float16 if device.type == "mps" else torch.float32
        return device, dtype

    @staticmethod
    def _stop_ids(tokenizer, model) -> list[int]:
        ids = model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        ids += [vocab[token] for token in _END_OF_TURN if token in vocab]
        return list(dict.fromkeys(ids))

    @staticmethod
    def _hint(error) -> str:
        text = str(error)
        if "VideoProcessor" in text or "torchvision" in text:
            return " (this model's processor needs torchvision: pip install torchvision matching your torch)"
        if isinstance(error, OSError):
            return (" (weights are fetched from the Hugging Face hub on first use; offline, give a local folder "
                    "with --vlm, an endpoint with --base-url, or the prompts with --source/--target)")
        return ""


def _processor_options(processor) -> dict:
    """Processor options that keep the picture token count modest. Idefics3 (SmolVLM) cuts a picture into
    tiles (384 pixels, 81 tokens each) after scaling its long side to 1536: 4x4 tiles. Two tiles on the long
    side (768 pixels, 2x2 tiles + a global view, ~400 tokens a picture) is plenty for light and colour."""
    tile = getattr(processor.image_processor, "max_image_size", None)
    if type(processor).__name__ == "Idefics3Processor" and isinstance(tile, dict) and "longest_edge" in tile:
        return {"size": {"longest_edge": 2 * tile["longest_edge"]}}
    return {}


def _default_device():
    from zsharm.models import default_device

    return default_device()


class OpenAIChatVLM:
    """Any OpenAI-compatible chat-completions endpoint, through urllib.

    base_url: the API root, e.g. `https://api.openai.com/v1`,
    `https://generativelanguage.googleapis.com/v1beta/openai`, `http://localhost:8000/v1` (vLLM),
    `http://localhost:11434/v1` (Ollama); `/chat/completions` is added unless already there.
    The key comes from the environment variable `api_key_env` (sent as a Bearer token; no header when unset,
    as local servers need none). Each request waits at most `timeout` seconds; timeouts, connection errors,
    HTTP 429 and 5xx are retried `retries` times after `backoff * 2**k` seconds.
    Images travel as base64 PNG data URLs. `max_tokens` is left out unless given: thinking models count
    their thoughts in it and would return nothing.
    """

    kind = "openai"
    RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}

    def __init__(self, base_url: str, model: str, api_key_env: str = "ZSHARM_VLM_API_KEY", timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0, temperature: float = TEMPERATURE,
                 max_tokens: int | None = None):
        if not base_url or not model:
            raise ZsharmError("an OpenAI-compatible endpoint needs both --base-url and --vlm-model")
        url = base_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ZsharmError(f"--base-url must start with http:// or https://, got {base_url!r}")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = str(model)
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.temperature = temperature
        self.max_tokens = max_tokens

    def request_body(self, parts: list) -> dict:
        """The chat-completions JSON for one user turn."""
        content = []
        for part in parts:
            if isinstance(part, Image.Image):
                content.append({"type": "image_url", "image_url": {"url": _data_url(part)}})
            else:
                content.append({"type": "text", "text": str(part)})
        body = {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature, "stream": False}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def ask(self, parts: list, seed: int = 0) -> str:
        """The endpoint's answer (the first choice's message text). `seed` is not sent: not every compatible
        endpoint accepts it, and the answer is checked and cached by the caller anyway."""
        data = json.dumps(self.request_body(parts)).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
            except urllib.error.HTTPError as error:
                detail = one_line(error.read().decode("utf-8", "replace"), 120)
                problem = f"HTTP {error.code}" + (f" ({detail})" if detail else "")
                if error.code in (401, 403):
                    raise ZsharmError(f"VLM endpoint {self.url} refused the request: {problem}; "
                                      f"put the API key in ${self.api_key_env}") from None
                if error.code in self.RETRY_STATUS:
                    continue
                raise ZsharmError(f"VLM endpoint {self.url} answered {problem}") from None
            except (TimeoutError, socket.timeout):
                problem = f"no answer within {self.timeout:g} s"
                continue
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                reason = getattr(error, "reason", error)
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    problem = f"no answer within {self.timeout:g} s"
                else:
                    problem = f"cannot connect ({one_line(reason, 120)})"
                continue
            return _answer_text(payload, self.url)
        raise ZsharmError(f"VLM endpoint {self.url} failed {self.retries + 1} times; last: {problem}")


def _answer_text(payload: bytes, url: str) -> str:
    try:
        reply = json.loads(payload)
        content = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ZsharmError(f"VLM endpoint {url} sent a reply that is not a chat completion: "
                          f"{one_line(payload.decode('utf-8', 'replace'), 120)!r}") from None
    if isinstance(content, list):  # some servers send content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    text = "" if content is None else str(content)
    # Reasoning models served by vLLM/Ollama may put their thoughts first; only what follows is the answer.
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text.strip()


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def build_tiny_vlm(out_dir, seed: int = 0) -> Path:
    """Write a tiny random-weight model of the default family (Idefics3 / SmolVLM) to `out_dir`, offline.

    It has the real architecture, processor, chat template and special tokens at toy sizes (a byte-level
    tokenizer, 32-pixel tiles, two layers), so `TransformersVLM(out_dir)` goes through exactly the loading,
    processing and generation code the real model does. Its answers are random text. A few MB; < 1 s.
    """
    import torch
    from transformers import (
        GPT2Tokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
    )
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    from transformers.models.idefics3 import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    out_dir = Path(out_dir)
    # A byte-level vocabulary without merges (GPT-2's byte-to-character table): any text is writable.
    vocab = {char: index for index, char in enumerate(bytes_to_unicode().values())}
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], unk_token="<|endoftext|>", bos_token="<|im_start|>",
                              eos_token="<end_of_utterance>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
        *[f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]]})
    # SmolVLM's chat-template layout: "<|im_start|>User:<image>text<end_of_utterance>\nAssistant:"
    template = ("<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
                "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
                "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
                "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
                "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                                do_image_splitting=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=template)
    config = Idefics3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
