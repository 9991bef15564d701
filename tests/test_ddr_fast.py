"""The DDR fast path (``compile=`` / ``autocast=``): same loss and input gradient as the exact eager fp32 path.

CPU tests use a very small random CLIP (one vision layer; the code path is the ViT-B/32 one) so that the one
Inductor compilation they need stays in the tens of seconds. The CUDA tests (skipped without CUDA) use the real
ViT-B/32 architecture with random weights, as the benchmark does.
"""
from __future__ import annotations

import copy
import functools
import pickle

import open_clip
import pytest
import torch
import torch._dynamo

from ddr_restore.ddr import descriptor as descriptor_module
from ddr_restore.ddr.clip_backend import ClipBundle, load_clip
from ddr_restore.ddr.descriptor import COMPILE_MODES, DDR, resolve_autocast, resolve_compile
from ddr_restore.errors import InputError
from ddr_restore.losses.ddr_loss import DDRLoss
from ddr_restore.registry import LOSS_REGISTRY

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA path (CUDA graphs, bf16): needs a GPU")

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_bundle() -> ClipBundle:
    """A one-layer random CLIP with the ViT code path (224 input, patch 32, QuickGELU)."""
    torch.manual_seed(1)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=224, layers=1, width=64, patch_size=32, head_width=32),
        text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
        quick_gelu=True,
    ).eval()
    return ClipBundle(model, open_clip.get_tokenizer("ViT-B-32"), "tiny", "random", True, 224, CLIP_MEAN, CLIP_STD)


@pytest.fixture(scope="module")
def bundle(one_thread) -> ClipBundle:
    return tiny_bundle()


@pytest.fixture(scope="module")
def inductor() -> None:
    """Skip when Inductor cannot build CPU kernels here (no C++ compiler)."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as err:  # the reason is whatever torch says is missing
        pytest.skip(f"torch.compile (Inductor) cannot compile CPU kernels here: {err}")


@pytest.fixture
def fresh_dynamo():
    """An empty compile cache: the captured function's graphs of earlier tests (one code object for every DDR
    instance) would otherwise count towards torch's recompile limit and could make a later test fall back to
    eager unnoticed."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _loss_and_grad(ddr: DDR, x: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    loss = ddr(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


# ---------------------------------------------------------------------------------------------- option values
@pytest.mark.parametrize(
    "value, expected",
    [(False, None), (None, None), (True, "default"), ("reduce-overhead", "reduce-overhead"),
     (" Max-Autotune ", "max-autotune"), ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")],
)
def test_resolve_compile(value, expected):
    assert resolve_compile(value) == expected


@pytest.mark.parametrize("value", ["fast", "true", 1, 0, "", ["default"]])
def test_resolve_compile_rejects_other_values_naming_the_option(value):
    with pytest.raises(InputError) as err:
        resolve_compile(value, option="train.ddr_opt.compile")
    msg = str(err.value)
    assert "train.ddr_opt.compile" in msg and repr(value) in msg
    assert all(mode in msg for mode in COMPILE_MODES)


@pytest.mark.parametrize(
    "value, expected",
    [(False, None), (None, None), (True, "fp16"), ("fp16", "fp16"), ("float16", "fp16"), ("BF16", "bf16"),
     ("bfloat16", "bf16")],
)
def test_resolve_autocast(value, expected):
    assert resolve_autocast(value) == expected


@pytest.mark.parametrize("value", ["fp32", "int8", 16])
def test_resolve_autocast_rejects_other_values_naming_the_option(value):
    with pytest.raises(InputError, match=r"train\.losses\.ddr\.autocast"):
        resolve_autocast(value, option="train.losses.ddr.autocast")


def test_ddr_checks_compile_and_autocast_before_loading_clip(monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("CLIP must not be loaded before the options are checked")

    monkeypatch.setattr(descriptor_module, "load_clip", no_load)
    with pytest.raises(InputError, match="compile"):
        DDR(pretrained="none", compile="fastest")
    with pytest.raises(InputError, match="autocast"):
        DDR(pretrained="none", autocast="fp8")


@pytest.mark.parametrize(
    "where, key, value",
    [("train.ddr_opt", "compile", "yes"), ("train.losses.ddr", "compile", 2), ("train.ddr_opt", "autocast", "fp64")],
)
def test_ddr_loss_errors_name_the_option_file_key(monkeypatch, where, key, value):
    monkeypatch.setattr(descriptor_module, "load_clip", lambda *a, **k: pytest.fail("CLIP loaded before the check"))
    # Built as the trainer builds it: the registry, switch_hint = "<where>.pretrained".
    cfg = {"type": "DDRLoss", "pretrained": "none", key: value}
    with pytest.raises(InputError) as err:
        LOSS_REGISTRY.build(cfg, where=where, switch_hint=f"{where}.pretrained")
    assert f"{where}.{key}" in str(err.value)
    with pytest.raises(InputError, match=f"DDRLoss {key}"):
        DDRLoss(pretrained="none", switch_hint=None, **{key: value})


def test_ddr_loss_passes_the_options_through(monkeypatch, bundle):
    monkeypatch.setattr(descriptor_module, "load_clip", lambda backbone, pretrained, switch_hint=None: bundle)
    loss = LOSS_REGISTRY.build({"type": "DDRLoss", "pretrained": "none", "compile": "reduce-overhead",
                                "autocast": "bf16"}, where="train.ddr_opt")
    assert loss.ddr.compile_mode == "reduce-overhead" and loss.ddr.autocast == "bf16"
    assert list(loss.parameters()) == []  # the frozen CLIP stays out of every optimizer and DDP reducer
    default = DDRLoss(pretrained="none")
    assert default.ddr.compile_mode is None and default.ddr.autocast is None  # exact eager fp32 by default
    assert "compile=None" in repr(default.ddr)


def test_autocast_true_keeps_its_meaning_fp16_on_cuda_only(bundle):
    ddr = DDR(clip=bundle, autocast=True)
    assert ddr.autocast == "fp16"
    assert ddr._autocast_dtype("cpu") is None and ddr._autocast_dtype("cuda") is torch.float16
    assert DDR(clip=bundle, autocast="bf16")._autocast_dtype("cpu") is torch.bfloat16


def test_bf16_autocast_on_cpu_is_close_to_fp32(bundle):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    loss32, grad32 = _loss_and_grad(DDR(clip=bundle), x)
    loss16, grad16 = _loss_and_grad(DDR(clip=bundle, autocast="bf16"), x)
    assert not torch.equal(loss16, loss32)  # bf16 was really used
    assert abs(float(loss16 - loss32)) < 1e-3
    assert torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0) > 0.99


# ---------------------------------------------------------------------------------------------- compiled, CPU
@pytest.fixture(scope="module")
def compiled_run(bundle, inductor):
    """Eager and compiled (Inductor, default mode) loss + input gradient on the same inputs; compiled once."""
    torch._dynamo.reset()
    eager, fast = DDR(clip=bundle), DDR(clip=bundle, compile=True)
    g = torch.Generator().manual_seed(0)
    x1 = torch.rand(2, 3, 64, 48, generator=g)  # non-square: the resize path
    x2 = torch.rand(2, 3, 80, 80, generator=g)  # another input size, same batch size
    graphs0 = _unique_graphs()
    out = {"x1": (_loss_and_grad(eager, x1), _loss_and_grad(fast, x1)), "graphs_first": _unique_graphs() - graphs0}
    graphs1 = _unique_graphs()
    out["x2"] = (_loss_and_grad(eager, x2), _loss_and_grad(fast, x2))
    out["graphs_second"] = _unique_graphs() - graphs1
    out["eager"], out["fast"] = eager, fast
    yield out
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["x1", "x2"])
def test_compiled_loss_and_input_gradient_match_eager_cpu(compiled_run, which):
    (loss_e, grad_e), (loss_c, grad_c) = compiled_run[which]
    assert abs(float(loss_c - loss_e)) <= 1e-4
    assert float((grad_c - grad_e).abs().max()) <= 1e-4
    assert float(grad_e.abs().max()) > 0  # the gradient reaches the image through the frozen CLIP


@pytest.mark.slow
def test_compiled_path_is_really_compiled_once_for_any_input_size(compiled_run):
    # One graph for the first call; a new input size of the same batch size reuses it (the resize stays eager,
    # the compiled part always sees 224x224).
    assert compiled_run["graphs_first"] == 1
    assert compiled_run["graphs_second"] == 0
    assert "_compiled_tower" in vars(compiled_run["fast"])


@pytest.mark.slow
def test_compiled_module_state_dict_and_copies(compiled_run):
    eager, fast = compiled_run["eager"], compiled_run["fast"]
    assert list(fast.state_dict()) == list(eager.state_dict())  # no "_orig_mod" keys: checkpoints unchanged
    assert [name for name, _ in fast.named_children()] == ["clip_model"]  # no compiled submodule
    for clone in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert "_compiled_tower" not in vars(clone)  # a copy compiles its own, bound to itself
        assert clone.compile_mode == "default"


def test_autocast_and_compile_compose_in_one_graph(bundle, monkeypatch, fresh_dynamo):
    """bf16 autocast inside the captured region, forward and backward (AOT autograd with the eager backend, so the
    test checks the tracing, not Inductor's kernels; those are covered by the CUDA tests and the benchmark)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    loss_e, grad_e = _loss_and_grad(DDR(clip=bundle, autocast="bf16"), x)
    graphs0 = _unique_graphs()
    fast = DDR(clip=bundle, autocast="bf16", compile=True)
    loss_c, grad_c = _loss_and_grad(fast, x)
    assert _unique_graphs() - graphs0 == 1  # captured whole: no graph break at the autocast region
    assert abs(float(loss_c - loss_e)) <= 1e-4
    assert float((grad_c - grad_e).abs().max()) <= 1e-4 * max(1.0, float(grad_e.abs().max()))


def test_compiled_quality_score_matches_eager(bundle, monkeypatch, fresh_dynamo):
    """The BIQA patch path goes through the same captured part (no-grad graph, chunked by ``max_batch``)."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    x = torch.rand(2, 3, 48, 80, generator=torch.Generator().manual_seed(6))
    eager = DDR(clip=bundle).quality_score(x, per_type=True)
    fast = DDR(clip=bundle, compile=True)
    assert torch.allclose(fast.quality_score(x, per_type=True), eager, atol=1e-5, rtol=0)
    assert torch.allclose(fast.quality_score(x, per_type=True, max_batch=3), eager, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- CUDA
@pytest.fixture(scope="module")
def vit_b32():
    torch.manual_seed(0)
    return load_clip("ViT-B-32", "none")


def _cuda_pair(bundle: ClipBundle, **fast_kwargs):
    return DDR(clip=bundle).cuda(), DDR(clip=bundle, **fast_kwargs).cuda()


@needs_cuda
@pytest.mark.slow
def test_cuda_reduce_overhead_fp32_matches_eager(vit_b32, fresh_dynamo):
    eager, fast = _cuda_pair(vit_b32, compile="reduce-overhead")
    g = torch.Generator(device="cuda").manual_seed(0)
    for _ in range(3):  # warm-up, CUDA-graph recording, replay: each must give the eager values for new inputs
        x = torch.rand(4, 3, 256, 256, device="cuda", generator=g)
        loss_e, grad_e = _loss_and_grad(eager, x)
        loss_c, grad_c = _loss_and_grad(fast, x)
        assert abs(float(loss_c - loss_e)) <= 1e-3
        assert float((grad_c - grad_e).abs().max()) <= 1e-3 * float(grad_e.abs().max())


@needs_cuda
@pytest.mark.slow
def test_cuda_reduce_overhead_bf16_within_target_of_fp32_eager(vit_b32, fresh_dynamo):
    # Tolerance: issue 11's target for the fast path, 1e-3 on the loss (a value in about [-1, 0]); bf16 keeps
    # 8 mantissa bits, and the loss is a mean of cosine distances of normalised embeddings, so errors do not grow
    # with the batch. The gradient direction is what training uses: cosine similarity >= 0.99.
    eager, fast = _cuda_pair(vit_b32, compile="reduce-overhead", autocast="bf16")
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(3):
        x = torch.rand(4, 3, 256, 256, device="cuda", generator=g)
        loss_e, grad_e = _loss_and_grad(eager, x)
        loss_c, grad_c = _loss_and_grad(fast, x)
        assert abs(float(loss_c - loss_e)) <= 1e-3
        assert torch.nn.functional.cosine_similarity(grad_c.flatten(), grad_e.flatten(), dim=0) >= 0.99


@needs_cuda
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_cuda_batch_sizes_compile_at_most_once_each(vit_b32, mode, fresh_dynamo):
    eager, fast = _cuda_pair(vit_b32, compile=mode)
    sizes = [1, 4, 1, 4, 2, 4]
    graphs0 = _unique_graphs()
    for b in sizes:
        x = torch.rand(b, 3, 256, 256, device="cuda")
        loss_e, _ = _loss_and_grad(eager, x)
        loss_c, _ = _loss_and_grad(fast, x)
        assert abs(float(loss_c - loss_e)) <= 1e-3
    assert 1 <= _unique_graphs() - graphs0 <= len(set(sizes))  # one graph per batch size at most


@needs_cuda
@pytest.mark.slow
def test_cuda_compiled_loss_under_the_trainers_autocast(vit_b32, fresh_dynamo):
    # train.amp: the trainer calls the losses inside torch.autocast; the compiled loss must work there too.
    eager, fast = _cuda_pair(vit_b32, compile="reduce-overhead")
    x = torch.rand(4, 3, 256, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_e, grad_e = _loss_and_grad(eager, x)
        for _ in range(2):
            loss_c, grad_c = _loss_and_grad(fast, x)
    assert abs(float(loss_c - loss_e)) <= 1e-3
    assert torch.nn.functional.cosine_similarity(grad_c.flatten(), grad_e.flatten(), dim=0) >= 0.99
