"""Tests for jaxgpt.tokenizer.hf: Qwen3- and Llama-3-style tokenizer folders, built offline, give the same ids,
text and rendered chats as transformers' AutoTokenizer; meta and save round trips; errors."""

import json
from datetime import datetime

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from jaxgpt.errors import UserError
from jaxgpt.tokenizer.hf import HFTokenizer, is_hf_folder, load_hf_tokenizer
from jaxgpt.tokenizer.kinds import get_tokenizer, tokenizer_from_meta

# Qwen2/Qwen3's pre-tokenizer regex; Llama 3's differs only in grouping up to three digits.
QWEN_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
              r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA_SPLIT = QWEN_SPLIT.replace(r"\p{N}|", r"\p{N}{1,3}|")
CORPUS = ["The quick brown fox jumps over the lazy dog. It's 2024; we'll see what they've done!",
          "我们今天去公园散步，天气很好。你好，世界！机器学习和自然语言处理。",
          "Mixed 中文 and English: tokenizers 分词器 learn merges 合并 from text 文本.\n\tdef f(x): return x ** 2",
          "Ünïcödé café naïve — emoji 🦙🔥, numbers 1234567 and 3.14159."] * 30
TEXTS = ["Hello, world! 你好，世界！", "  leading spaces and\n\nnew lines\r\n", "数字 12345 和 emoji 🦙 ok",
         "e\u0301 composed by NFC", "<|im_start|>user\n你好<|im_end|>", "a<|endoftext|>b <|begin_of_text|>x",
         "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", ""]
QWEN_TEMPLATE = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_user=0) %}
{%- for message in messages %}{% if message.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}
{%- for message in messages %}
    {%- if message.role == 'system' %}{% continue %}{% endif %}
    {%- if message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- if message.reasoning_content is defined and loop.index0 > ns.last_user %}
            {%- set content = '<think>\\n' + message.reasoning_content.strip() + '\\n</think>\\n\\n' + content %}
        {%- endif %}
        {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
<think>

</think>

    {% endif %}
{%- endif %}"""
LLAMA_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = strftime_now("%d %b %Y") %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content']|trim %}{%- set messages = messages[1:] %}
{%- else %}{%- set system = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\nToday Date: " + date_string + "\\n\\n" + system + "<|eot_id|>" }}
{%- if tools is not none %}{{- raise_exception("no tools here") }}{%- endif %}
{%- for message in messages %}
    {%- if message.role not in ['user', 'assistant'] %}
        {{- raise_exception("unknown role " + message.role) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {{- message['content'] | trim + '<|eot_id|>' }}
    {%- if message.meta is defined %}{{- message.meta | tojson }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""
CHATS = [
    [{"role": "user", "content": "你好！What is 2+2?"}],
    [{"role": "system", "content": "You are terse. 简短回答。"}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! 你好", "reasoning_content": " greet back "},
     {"role": "user", "content": "  Name a fox.  ", "meta": {"lang": "中文", "html": "<b>&</b>"}}],
    [{"role": "user", "content": "one", "tool_calls": None}, {"role": "assistant", "content": "two", "thinking": "t"},
     {"role": "user", "content": "three"}, {"role": "assistant", "content": "four", "reasoning": " why "}],
]


def _train(split: str, specials: list[str], nfc: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    tok = _train(QWEN_SPLIT, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], nfc=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    path = tmp_path_factory.mktemp("qwen")
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                            chat_template=QWEN_TEMPLATE).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    tok = _train(LLAMA_SPLIT, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                               "<|eot_id|>"], nfc=False)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    path = tmp_path_factory.mktemp("llama")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                            chat_template=LLAMA_TEMPLATE).save_pretrained(path)
    return path


@pytest.fixture(params=["qwen", "llama"])
def pair(request, qwen_dir, llama_dir):
    """(jaxgpt's tokenizer, transformers' tokenizer) on the same folder."""
    path = qwen_dir if request.param == "qwen" else llama_dir
    return load_hf_tokenizer(path), AutoTokenizer.from_pretrained(path)


def test_ids_and_text_equal_transformers(pair):
    tok, ref = pair
    assert tok.vocab_size == len(ref) and tok.eot_id == ref.eos_token_id and tok.bos_id == ref.bos_token_id
    for text in TEXTS + CORPUS[:4]:
        ids = tok.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"]
        assert tok.encode(text, add_special_tokens=True) == ref(text)["input_ids"]
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=False)
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_special_tokens_and_documents(qwen_dir, llama_dir):
    qwen, llama = load_hf_tokenizer(qwen_dir), load_hf_tokenizer(llama_dir)
    assert qwen.bos_id is None and qwen.encode("<|im_end|>") == [qwen.eot_id]
    assert qwen.encode_document("你好") == [qwen.eot_id, *qwen.encode("你好")]
    assert llama.encode("Hi", add_special_tokens=True) == [llama.bos_id, *llama.encode("Hi")]
    assert llama.encode_document("Hi") == [llama.bos_id, *llama.encode("Hi")]
    assert qwen.encode("<|im_start|>") != qwen.encode("<|im_start")  # only the whole string is special


@pytest.mark.parametrize("generation", [True, False])
def test_render_chat_equals_apply_chat_template(pair, generation):
    tok, ref = pair
    extra = {"date_string": "26 Jul 2024"}
    for chat in CHATS:
        want = ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation, **extra)
        assert tok.render_chat(chat, add_generation_prompt=generation, **extra) == want
        assert tok.encode(want) == ref.apply_chat_template(chat, add_generation_prompt=generation, **extra,
                                                           return_dict=False)
    if tok.bos_id is None:  # Qwen3's switch
        for chat in CHATS:
            want = ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation,
                                           enable_thinking=False)
            assert tok.render_chat(chat, add_generation_prompt=generation, enable_thinking=False) == want


def test_template_globals(llama_dir):
    tok = load_hf_tokenizer(llama_dir)
    days = {datetime.now().strftime("%d %b %Y")}
    text = tok.render_chat(CHATS[0])
    days.add(datetime.now().strftime("%d %b %Y"))  # the day may turn while rendering
    assert any(f"Today Date: {d}\n" in text for d in days)
    _one_line_error(tok.render_chat, [{"role": "tool", "content": "x"}], match="refused.*unknown role tool")


def test_meta_and_save_round_trip(pair, tmp_path):
    tok, _ = pair
    meta = json.loads(json.dumps(tok.meta()))
    again = tokenizer_from_meta(meta)
    tok.save(tmp_path / "saved")
    ref = AutoTokenizer.from_pretrained(tmp_path / "saved")
    loaded = get_tokenizer(str(tmp_path / "saved"))
    assert isinstance(loaded, HFTokenizer) and is_hf_folder(tmp_path / "saved")
    for text in TEXTS:
        assert again.encode(text) == loaded.encode(text) == tok.encode(text)
        assert ref(text)["input_ids"] == tok.encode(text, add_special_tokens=True)
    for chat in CHATS:
        assert again.render_chat(chat, date_string="1 Jan 2025") == loaded.render_chat(chat, date_string="1 Jan 2025") \
            == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True, date_string="1 Jan 2025")


def test_config_forms(qwen_dir, tmp_path):
    """Special tokens as {"content": ...}, a token the tokenizer lacks (added as transformers does),
    split_special_tokens, special_tokens_map.json in older folders, Qwen3's own tokenizer_class."""
    text = (qwen_dir / "tokenizer.json").read_text()
    template = (qwen_dir / "chat_template.jinja").read_text()
    tok = HFTokenizer(text, {"eos_token": {"content": "<|im_end|>", "special": True}, "chat_template": template,
                             "pad_token": "<|extra_pad|>", "split_special_tokens": True})
    tok.save(tmp_path / "forms")
    ref = AutoTokenizer.from_pretrained(tmp_path / "forms")
    assert ref.split_special_tokens and tok.vocab_size == len(ref)
    for sample in ("a<|extra_pad|>", "<|im_end|> and <|im_start|>"):
        assert tok.encode(sample) == ref(sample)["input_ids"]
    assert tok.render_chat(CHATS[0]) == load_hf_tokenizer(qwen_dir).render_chat(CHATS[0])
    folder = tmp_path / "qwen3"
    folder.mkdir()
    config = {**json.loads((qwen_dir / "tokenizer_config.json").read_text()), "tokenizer_class": "Qwen2Tokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(text)
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": {"content": "<|endoftext|>"}}))
    tok, ref = load_hf_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert type(ref).__name__ == "Qwen2Tokenizer" and tok.bos_id == ref.bos_token_id is not None
    assert all(tok.encode(t, add_special_tokens=True) == ref(t)["input_ids"] for t in TEXTS)


def _one_line_error(fn, *args, match: str):
    with pytest.raises(UserError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)


def test_errors(qwen_dir, tmp_path):
    _one_line_error(load_hf_tokenizer, tmp_path, match="has no tokenizer.json")
    (tmp_path / "tokenizer.json").write_text((qwen_dir / "tokenizer.json").read_text())
    assert not is_hf_folder(tmp_path)
    _one_line_error(load_hf_tokenizer, tmp_path, match="has no tokenizer_config.json")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    _one_line_error(load_hf_tokenizer, tmp_path, match="not valid JSON")
    (tmp_path / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}')
    tok = load_hf_tokenizer(tmp_path)
    _one_line_error(tok.render_chat, CHATS[0], match="no chat template")
    _one_line_error(load_hf_tokenizer(qwen_dir).render_chat, [], match="empty conversation")
    _one_line_error(HFTokenizer, "{}", {}, match="not a tokenizers JSON")
    _one_line_error(HFTokenizer, (qwen_dir / "tokenizer.json").read_text(), {"eos_token": 3}, match="eos_token")
    bad = HFTokenizer((qwen_dir / "tokenizer.json").read_text(), {"chat_template": "{% if %}"})
    _one_line_error(bad.render_chat, CHATS[0], match="not valid jinja2")
    _one_line_error(tokenizer_from_meta, {"kind": "hf", "tokenizer": "{}"}, match="malformed tokenizer meta")
    _one_line_error(tok.decode, [tok.vocab_size], match="outside the vocabulary")
