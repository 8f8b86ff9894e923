"""Hugging Face fast tokenizers (Qwen3, Llama 3, ...): a folder's tokenizer.json and tokenizer_config.json,
read offline, with their special tokens and chat template.

Encoding goes through Hugging Face's `tokenizers` library and chat templates through `jinja2` (the
`jaxgpt[hf]` extra); ids, decoded text and rendered chats equal those of transformers' `AutoTokenizer` on
the same folder. The tokenizer JSON and the part of the config that matters (`KEPT`) travel in `meta()`,
so a run needs nothing outside itself to rebuild it, and `save` writes a folder transformers loads.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from jaxgpt.errors import UserError
from jaxgpt.files import write_atomic
from jaxgpt.tokenizer.base import to_ids
from jaxgpt.tokenizer.bpe import tokenizers_module

FILE = "tokenizer.json"
CONFIG = "tokenizer_config.json"
TEMPLATE = "chat_template.jinja"  # transformers 5 writes the chat template here instead of into CONFIG
SPECIAL_MAP = "special_tokens_map.json"  # older folders: special tokens beside CONFIG
EXTRA = "pip install 'jaxgpt[hf]'"
# transformers' named special tokens, in its order; each is visible to a chat template under its name.
SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# add_bos_token/add_eos_token are kept but, as in transformers 5, the tokenizer.json post-processor decides.
KEPT = (*SPECIAL, "chat_template", "add_bos_token", "add_eos_token", "model_max_length", "tokenizer_class",
        "clean_up_tokenization_spaces", "split_special_tokens")
# Older names of a message's reasoning; templates read `reasoning_content` (transformers fills it the same way).
_REASONING = ("reasoning_content", "thinking", "reasoning")
# transformers' clean_up_tokenization: spaces a word-piece decoder leaves before punctuation and clitics.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _token_text(key: str, value) -> str | None:
    """A special token written as "<s>" or {"content": "<s>", ...} (both occur in tokenizer_config.json)."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value
    raise UserError(f"{CONFIG}: {key} must be a string or {{\"content\": ...}}, got {str(value)[:60]!r}; "
                    "fix the file or save the tokenizer again with transformers")


def _one_template(template) -> str | None:
    """The chat template: a string, or the "default" of a list of {"name", "template"} (older configs)."""
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise UserError(f"{CONFIG}: chat_template must be a string or a list holding a 'default' template; "
                    "fix the file or save the tokenizer again with transformers")


class HFTokenizer:
    """A Hugging Face fast tokenizer with its config (special tokens, chat template).

    `eot_id` is the eos token's id (Qwen3: <|im_end|>, Llama 3: <|end_of_text|>), `bos_id` the bos token's
    id or None (Qwen has none). `vocab_size` counts the added tokens; a model's embedding may have more rows.
    """

    name = "hf"

    def __init__(self, tokenizer_json: str, config: dict) -> None:
        if not isinstance(config, dict):
            raise UserError(f"{CONFIG} must hold a JSON object; save the tokenizer again with transformers")
        tk = tokenizers_module(EXTRA)
        try:
            self._tok = tk.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # the library raises its own exception type for malformed JSON
            raise UserError(f"{FILE} is not a tokenizers JSON ({str(e)[:100]}); save the tokenizer again") from None
        self._json = tokenizer_json
        self.config = {k: config[k] for k in KEPT if config.get(k) is not None}
        self.config.update({k: _token_text(k, self.config[k]) for k in SPECIAL if k in self.config})
        if "chat_template" in self.config:
            self.config["chat_template"] = _one_template(self.config["chat_template"])
        self.special_tokens = {k: self.config[k] for k in SPECIAL if k in self.config}
        # transformers adds a named special token the tokenizer lacks, after its last id: so do we.
        missing = [t for t in dict.fromkeys(self.special_tokens.values()) if self._tok.token_to_id(t) is None]
        self._tok.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in missing])
        # split_special_tokens: special tokens' strings in text are plain text (transformers' switch).
        self._tok.encode_special_tokens = bool(self.config.get("split_special_tokens", False))
        # Added tokens may leave gaps in the ids; the size covers the highest id.
        self.vocab_size: int = max(self._tok.get_vocab_size(with_added_tokens=True),
                                   1 + max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1))
        self.eot_id: int | None = self._id("eos_token")
        self.bos_id: int | None = self._id("bos_token")
        self.chat_template: str | None = self.config.get("chat_template")
        key = json.dumps([tokenizer_json, self.config], sort_keys=True)
        self.fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]

    def _id(self, key: str) -> int | None:
        token = self.special_tokens.get(key)
        return None if token is None else self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Args: text, where each added token's string (e.g. "<|im_end|>") becomes its one id, unless the
        config sets split_special_tokens;
        add_special_tokens, whether the post-processor adds its tokens (Llama 3: <|begin_of_text|> first),
        as transformers' `tokenizer(text)` does by default. Returns: token ids."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_document(self, text: str) -> list[int]:
        """A corpus document, separator first as every jaxgpt tokenizer does: [bos (or eos when the tokenizer
        has no bos, as Qwen), *tokens]; just the tokens when it has neither."""
        sep = self.bos_id if self.bos_id is not None else self.eot_id
        return self.encode(text) if sep is None else [sep, *self.encode(text)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Args: ids, any iterable of ints (numpy arrays too). Returns: the text, as transformers' `decode`
        (clean_up_tokenization_spaces applies to WordPiece and the like, never to BPE models)."""
        text = self._tok.decode(to_ids(ids, self.vocab_size), skip_special_tokens=skip_special_tokens)
        if self.config.get("clean_up_tokenization_spaces") and type(self._tok.model).__name__ != "BPE":
            for spaced, tight in _CLEANUP:
                text = text.replace(spaced, tight)
        return text

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """The chat as text, exactly as transformers' `apply_chat_template(messages, tokenize=False, ...)`.

        Args:
          messages: [{"role": "system" | "user" | "assistant" | ..., "content": str, ...}, ...]; keys whose
            value is None are dropped, and an older reasoning key ("thinking", "reasoning") is also given as
            "reasoning_content", as transformers does.
          add_generation_prompt: end with the header that starts the assistant's reply.
          kwargs: more template variables (Qwen3: enable_thinking=False; tools, documents, date_string).
        Returns: the rendered text; encode it with `encode` (its special tokens are already in it).
        """
        if self.chat_template is None:
            raise UserError(f"this tokenizer has no chat template; add 'chat_template' to its {CONFIG} "
                            f"(or a {TEMPLATE} file) or use a chat model's tokenizer folder")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise UserError("messages must be a list of dicts like {'role': 'user', 'content': 'Hi'}")
        if not messages:
            raise UserError("cannot render an empty conversation; pass at least one message")
        messages = [_plain_message(m) for m in messages]
        variables = {"tools": None, "documents": None, **self.special_tokens, **kwargs}
        template = _compile(self.chat_template)
        try:
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        except _jinja2().TemplateError as e:  # the template's raise_exception, an undefined name, the sandbox
            reason = " ".join(str(e).split())[:200]
            raise UserError(f"the chat template refused these messages ({reason}); check their roles, order "
                            "and fields against what this model expects") from None

    def meta(self) -> dict:
        """The whole tokenizer, JSON-serialisable (a run carries it; `tokenizer_from_meta` rebuilds it)."""
        return {"kind": "hf", "tokenizer": self._json, "config": dict(self.config)}

    def hf_json(self) -> str:
        return self._json

    def files(self) -> dict[str, str]:
        """{file name: text}: tokenizer.json and tokenizer_config.json (chat template inside), the files
        of a folder that transformers' `AutoTokenizer.from_pretrained` loads to the same ids."""
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.config}
        return {FILE: self._json, CONFIG: json.dumps(config, indent=2, ensure_ascii=False) + "\n"}

    def save(self, folder: str | Path) -> None:
        """Write `files()` into `folder` (made if needed), each file atomically."""
        for name, text in self.files().items():
            write_atomic(Path(folder) / name, text)


def _plain_message(message: dict) -> dict:
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING if k in message), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _jinja2():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError:
        raise UserError(f"chat templates need the jinja2 package: {EXTRA}") from None
    return jinja2


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    """The jinja2 template in the environment transformers renders chat templates in (sandboxed; trimmed
    blocks; break/continue; a `tojson` that keeps non-ASCII and HTML characters; `raise_exception`,
    `strftime_now`, and a `namespace` that refuses underscore-prefixed names)."""
    jinja2 = _jinja2()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args, **kwargs):  # jinja's own signature trick, so that namespace(self=...) works
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a chat template may not set {name!r} on a namespace")

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, namespace=Namespace,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt))
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise UserError(f"the chat template is not valid jinja2 (line {e.lineno}: {e.message}); "
                        f"fix chat_template in {CONFIG}") from None


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); give a folder saved by transformers' "
                        "save_pretrained") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({str(e)[:80]}); download or save the tokenizer again") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a JSON object; download or save the tokenizer again")
    return d


def load_hf_tokenizer(folder: str | Path) -> HFTokenizer:
    """The tokenizer in a Hugging Face folder: tokenizer.json, tokenizer_config.json and, if present,
    chat_template.jinja (which wins over the config's template, as in transformers) and
    special_tokens_map.json (read only when the config has no added_tokens_decoder, as in transformers)."""
    folder = Path(folder)
    for name in (FILE, CONFIG):
        if not (folder / name).is_file():
            raise UserError(f"{folder} has no {name}; give a folder saved by transformers' save_pretrained "
                            "(it holds tokenizer.json and tokenizer_config.json)")
    try:
        text = (folder / FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {folder / FILE} ({e}); download or save the tokenizer again") from None
    config = _read_json(folder / CONFIG)
    if (folder / SPECIAL_MAP).is_file() and "added_tokens_decoder" not in config:
        config.update({k: v for k, v in _read_json(folder / SPECIAL_MAP).items() if k in SPECIAL})
    if (folder / TEMPLATE).is_file():
        try:
            config["chat_template"] = (folder / TEMPLATE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {folder / TEMPLATE} ({e}); download or save the tokenizer again") from None
    return HFTokenizer(text, config)


def hf_tokenizer_files(meta: dict) -> dict[str, str]:
    """The files of a Hugging Face tokenizer folder ({name: text}) for an HFTokenizer's `meta()`."""
    if not isinstance(meta, dict) or meta.get("kind") != "hf":
        raise UserError(f"not a Hugging Face tokenizer's meta ({str(meta)[:60]!r}); expected kind 'hf'")
    return HFTokenizer(meta.get("tokenizer"), meta.get("config")).files()


def is_hf_folder(path: str | Path) -> bool:
    """A folder with tokenizer.json AND tokenizer_config.json (a trained BPE folder has only the first)."""
    return Path(path).is_dir() and (Path(path) / FILE).is_file() and (Path(path) / CONFIG).is_file()
