"""Extract: describers turn an image into its source description (EMS step 1).

Every describer has one method, ``describe(image) -> str`` (image: PIL image or uint8 ``[height, width, 3]``).
Failures are :class:`~latentlens.errors.DescriberError` — never a silent fallback to another describer.

- :class:`TextDescriber` — the text the user gives.
- :class:`ShapesDescriber` — the shapes world's captioner (oracle → canonical caption).
- :class:`TransformersDescriber` — a local transformers image-text-to-text model folder (offline).
- :class:`EndpointDescriber` — an OpenAI-compatible chat-completions endpoint with image input
  (vLLM, Ollama, LM Studio): the image travels as a PNG ``data:`` URI in an ``image_url`` part.

:func:`shapes_target` builds a shapes-world target: the source caption with one attribute changed.

Example::

    d = EndpointDescriber("http://127.0.0.1:8000/v1", model="qwen2-vl", timeout=30, retries=2)
    source = d.describe(PIL.Image.open("cat.png"))
    target = shapes_target("a small red circle on the left on a gray background", "color", "blue")
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np
import PIL.Image

from latentlens.errors import ConfigError, DescriberError

DEFAULT_INSTRUCTION = (
    "Describe this image in one short sentence that could be used as a text-to-image prompt: "
    "the main object with its colour, shape and size, where it is, and the background."
)


def _as_pil(image: Any) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ConfigError(f"A describer needs a PIL image or a uint8 array [H, W, 3]; got {arr.dtype} {arr.shape}.")
    return PIL.Image.fromarray(arr, "RGB")


class Describer:
    """The interface: ``describe(image) -> str``."""

    def describe(self, image: Any) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, image: Any) -> str:
        return self.describe(image)


class TextDescriber(Describer):
    """Returns the user's text for every image. Example: ``TextDescriber("a red circle").describe(img)``."""

    def __init__(self, text: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("The description text is empty; give a sentence describing the image.")
        self.text = text.strip()

    def describe(self, image: Any = None) -> str:
        return self.text


class ShapesDescriber(Describer):
    """The shapes world's captioner: the oracle reads the attributes, the canonical caption says them."""

    def describe(self, image: Any) -> str:
        from latentlens.shapes import describe

        return describe(np.asarray(_as_pil(image)))


class TransformersDescriber(Describer):
    """A local transformers image-text-to-text model (a folder the user gives; nothing is downloaded).

    Example: ``TransformersDescriber("/models/SmolVLM-256M-Instruct").describe(img)``.
    """

    def __init__(
        self,
        path: str | Path,
        instruction: str = DEFAULT_INSTRUCTION,
        max_new_tokens: int = 60,
        device: str | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir() or not (self.path / "config.json").is_file():
            raise DescriberError(
                f"The describer model folder {self.path} does not exist or has no config.json; give the path of a "
                "locally saved transformers image-text-to-text model (latentlens never downloads one)."
            )
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise DescriberError(
                f"The describer model in {self.path} cannot be loaded as an image-text-to-text model ({error})."
            ) from error
        self.model.eval()
        if device:
            self.model.to(device)
        self.instruction = instruction
        self.max_new_tokens = int(max_new_tokens)

    def describe(self, image: Any) -> str:
        import torch

        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.instruction}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(text=prompt, images=[_as_pil(image)], return_tensors="pt").to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        text = self.processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        text = text.strip()
        if not text:
            raise DescriberError(f"The describer model in {self.path} returned an empty description.")
        return text


class EndpointDescriber(Describer):
    """An OpenAI-compatible ``/chat/completions`` endpoint with image input.

    Args:
        url: base URL (``http://host:8000/v1``) or the full ``.../chat/completions`` URL.
        model: the model name the server expects.
        timeout: seconds per request. retries: extra attempts after a failed one (connection error,
            timeout, HTTP 5xx/429), with ``retry_wait`` (0.5 s), twice that, … pauses (at most 4 s).
        api_key: sent as a Bearer token.
    """

    def __init__(
        self,
        url: str,
        model: str,
        timeout: float = 30.0,
        retries: int = 2,
        api_key: str | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        max_tokens: int = 80,
        retry_wait: float = 0.5,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"Describer endpoint URL {url!r} must start with http:// or https://.")
        if not model:
            raise ConfigError("The describer endpoint needs a model name (the one the server serves).")
        if float(timeout) <= 0 or int(retries) < 0:
            raise ConfigError(f"timeout must be > 0 and retries >= 0; got timeout={timeout}, retries={retries}.")
        if float(retry_wait) < 0:
            raise ConfigError(f"retry_wait must be >= 0 seconds; got {retry_wait}.")
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.api_key = api_key
        self.instruction = instruction
        self.max_tokens = int(max_tokens)
        self.retry_wait = float(retry_wait)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EndpointDescriber:
        """From a mapping with ``url``, ``model`` and optional ``timeout``, ``retries``, ``api_key``, ``instruction``."""
        known = {"url", "model", "timeout", "retries", "retry_wait", "api_key", "instruction", "max_tokens"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"Unknown describer endpoint settings {unknown}; valid keys are {sorted(known)}.")
        if "url" not in config or "model" not in config:
            raise ConfigError("The describer endpoint config needs 'url' and 'model'.")
        return cls(**dict(config))

    def _payload(self, image: Any) -> bytes:
        buffer = io.BytesIO()
        _as_pil(image).save(buffer, format="PNG")
        data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": self.instruction},
                        {"type": "image_url", "image_url": {"url": data_uri}},
                    ],
                }
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        return json.dumps(body).encode("utf-8")

    def describe(self, image: Any) -> str:
        payload = self._payload(image)
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.retry_wait * 2 ** (attempt - 1), 4.0))
            request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
            except urllib.error.HTTPError as error:
                last = f"HTTP {error.code} {error.reason}"
                if error.code in (429,) or error.code >= 500:
                    continue
                raise DescriberError(
                    f"The describer endpoint {self.url} refused the request ({last}); check the URL and model name "
                    f"{self.model!r}."
                ) from error
            except (TimeoutError, OSError) as error:  # URLError, ConnectionRefused, socket.timeout
                reason = getattr(error, "reason", error)
                last = "timed out" if "timed out" in str(reason) or isinstance(reason, TimeoutError) else str(reason)
                continue
            return self._parse(raw)
        raise DescriberError(
            f"The describer endpoint {self.url} failed after {self.retries + 1} attempt(s) ({last}); check that the "
            f"server is running and reachable, or raise timeout (now {self.timeout:g} s) / retries."
        )

    def _parse(self, raw: bytes) -> str:
        try:
            doc = json.loads(raw.decode("utf-8"))
            content = doc["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            snippet = raw[:120].decode("utf-8", "replace")
            raise DescriberError(
                f"The describer endpoint {self.url} answered something that is not an OpenAI chat completion "
                f"({type(error).__name__}: {error}; the answer began {snippet!r})."
            ) from error
        if isinstance(content, list):  # some servers return content parts
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str) or not content.strip():
            raise DescriberError(f"The describer endpoint {self.url} returned an empty description.")
        return content.strip()


def shapes_target(source_caption: str, attribute: str, value: str) -> str:
    """The canonical caption of ``source_caption``'s attributes with ``attribute`` set to ``value``.

    Example: ``shapes_target("a small red circle on the left on a gray background", "color", "blue")``
    → ``"a small blue circle on the left on a gray background"``.
    """
    from latentlens.shapes import ATTRIBUTES, canonical_caption, parse_caption

    if attribute not in ATTRIBUTES:
        raise ConfigError(f"Unknown shapes attribute {attribute!r}; valid: {', '.join(ATTRIBUTES)}.")
    attrs = parse_caption(source_caption)
    return canonical_caption(attrs.replace(**{attribute: value}))


def make_describer(spec: Any) -> Describer:
    """A describer from a spec: a :class:`Describer`, ``"shapes"``, ``{"endpoint": {...}}``, ``{"transformers": path}``."""
    if isinstance(spec, Describer):
        return spec
    if spec == "shapes":
        return ShapesDescriber()
    if isinstance(spec, Mapping):
        if "endpoint" in spec:
            return EndpointDescriber.from_config(spec["endpoint"])
        if "transformers" in spec:
            return TransformersDescriber(spec["transformers"])
    raise ConfigError(
        f"Unknown describer {spec!r}; use 'shapes', {{'endpoint': {{'url': ..., 'model': ...}}}}, "
        "{'transformers': '/path/to/model'} or a Describer object."
    )


__all__ = [
    "Describer",
    "EndpointDescriber",
    "ShapesDescriber",
    "TextDescriber",
    "TransformersDescriber",
    "make_describer",
    "shapes_target",
]
