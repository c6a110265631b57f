"""Shared pieces of the framework tests: a tiny randomly initialised GPT-2, offline."""

import pytest
import torch

SEQ, BATCH, VOCAB = 16, 2, 256


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    """GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256), no dropout, seeded."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=2, vocab_size=VOCAB, n_positions=SEQ,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def token_batches(n: int, seed: int = 1) -> list[torch.Tensor]:
    """``n`` batches of random token ids, shape (BATCH, SEQ)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen) for _ in range(n)]


def params_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_all_finite(model: torch.nn.Module) -> None:
    """Every parameter finite."""
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-identical parameter sets."""
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
