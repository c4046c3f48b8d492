"""`qllm-serve`'s config (conf/serve.yaml): it composes with qllm-bench's groups, every tokenizer
config instantiates and round-trips text, and streamed text equals the whole decoded text."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from qllm.errors import ConfigurationError
from qllm.server.main import build_app
from qllm.server.tokenizer import IncrementalDetokenizer
from tests.helpers import CONF_DIR

CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}<assistant>"


def compose_serve(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("serve", overrides=list(overrides))


def saved_word_tokenizer(folder) -> None:
    """A tiny Hugging Face tokenizer with a chat template, saved as `from_pretrained` reads it."""
    words = ["<unk>", "<user>", "<assistant>", "hello", "world", "again"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", chat_template=CHAT_TEMPLATE)
    tokenizer.save_pretrained(folder)


def test_serve_composes_the_benchmarks_model_executor_and_engine_groups():
    cfg = compose_serve("model=small_mixtral", "engine=priority_cb", "port=9000")
    assert list(cfg.engine) == ["priority_cb"] and cfg.engine.priority_cb.policy._target_.endswith("PriorityContinuousBatchingPolicy")
    assert cfg.model.config.hidden_size == 256 and cfg.executor._target_ == "qllm.real.executor.RealExecutor"
    assert cfg.port == 9000 and cfg.tokenizer._target_.endswith("MistralV1Tokenizer")
    assert "tokenizer" not in compose_serve("~tokenizer")


def streamed_text(detokenizer, token_ids: list[int]) -> str:
    return "".join(detokenizer.add(token_id) for token_id in token_ids)


def test_mixtrals_tokenizer_encodes_text_and_chat_and_streams_text_exactly():
    tokenizer = instantiate(compose_serve().tokenizer)
    text = "Hello world, naïve café — 日本語!"
    ids = tokenizer.encode(text)
    assert ids[0] == 1 and tokenizer.decode(ids) == text
    assert tokenizer.encode_chat([{"role": "user", "content": "Hello"}]) == [1, 733, 16289, 28793, 22557, 733, 28748, 16289, 28793]
    generated = [*ids[3:], *torch.randint(3, 32000, (300,), generator=torch.Generator().manual_seed(0)).tolist()]
    whole = tokenizer.decode(ids[:3] + generated)[len(tokenizer.decode(ids[:3])) :]  # what follows the prompt
    for detokenizer in (tokenizer.detokenizer(ids[:3]), IncrementalDetokenizer(tokenizer, ids[:3])):
        assert streamed_text(detokenizer, generated) == whole


def test_the_pretrained_tokenizer_is_the_one_saved_with_the_weights(tmp_path):
    saved_word_tokenizer(tmp_path)
    tokenizer = instantiate(compose_serve("model=from_pretrained", f"model.pretrained={tmp_path}", "tokenizer=pretrained").tokenizer)
    assert tokenizer.encode("hello world again") == [3, 4, 5] and tokenizer.decode([3, 4]) == "hello world"
    assert tokenizer.encode_chat([{"role": "user", "content": "hello"}]) == [1, 3, 2]
    assert streamed_text(tokenizer.detokenizer([3]), [4, 5]) == tokenizer.decode([3, 4, 5])[len("hello") :]


def test_an_engine_without_the_served_engine_protocol_is_refused_naming_what_it_lacks():
    cfg = compose_serve("engine=hf_generate", "model.config.num_hidden_layers=1", "warmup_tokens=0")
    with pytest.raises(ConfigurationError, match=r"engine hf_generate .* cannot be served: it lacks .*abort.*ServedEngine"):
        build_app(cfg, "tiny_mixtral")
