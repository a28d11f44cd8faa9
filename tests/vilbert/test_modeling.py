"""Tiny-config tests: every task through the model, and the trunk's invariants."""

import pytest
import torch

from tests.vilbert.official_reference import official_forward, random_official_state_dict
from vilbert.checkpoint import convert_official_state_dict
from vilbert.config import preset
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import TASKS, Head, get_task

B, T, R, F = 3, 9, 7, 16


def make_inputs(task, b=B, t=T, r=R, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (b, task.images_per_example, r) if task.images_per_example > 1 else (b, r)
    ids = torch.randint(1000, 2000, (b, t), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    return dict(
        input_ids=ids,
        attention_mask=torch.ones(b, t, dtype=torch.long),
        region_features=torch.randn(*shape, F, generator=g),
        region_locations=torch.rand(*shape, 5, generator=g),
        region_mask=torch.ones(*shape),
    )


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiTaskViLBERT(preset("tiny")).eval()


EXPECTED = {
    Head.ANSWER: (B, 11),
    Head.ANSWER_GQA: (B, 7),
    Head.MATCH: (B,),
    Head.REGION: (B, R),
    Head.PAIR: (B, 2),
    Head.TRIPLE: (B, 3),
}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.slug)
def test_every_task_runs_and_has_its_head_shape(model, task):
    with torch.no_grad():
        out = model(task, **make_inputs(task))
    assert tuple(out.logits.shape) == EXPECTED[task.head]
    assert torch.isfinite(out.logits).all()
    rows = B * task.images_per_example
    assert out.trunk.text_states.shape == (rows, T + 1, 32)  # task token inside
    assert out.trunk.fused.shape == (rows, 32)


def test_forward_runs_only_the_requested_head(model):
    called = []
    hooks = [
        getattr(model.heads, str(h)).register_forward_hook(lambda m, i, o, h=h: called.append(h))
        for h in Head
    ]
    with torch.no_grad():
        model(get_task("snli_ve"), **make_inputs(get_task("snli_ve")))
    for hook in hooks:
        hook.remove()
    assert called == [Head.TRIPLE]


def test_task_token_changes_the_output(model):
    task = get_task("vqa")
    x = make_inputs(task)
    with torch.no_grad():
        a = model(task, **x).logits
        b = model(task, **x, task_ids=torch.full((B,), 2)).logits
    assert (a - b).abs().max() > 1e-4


def test_text_padding_does_not_change_real_positions(model):
    task = get_task("refcoco")
    x = make_inputs(task, b=1)
    padded = dict(x)
    padded["input_ids"] = torch.cat([x["input_ids"], torch.zeros(1, 5, dtype=torch.long)], 1)
    padded["attention_mask"] = torch.cat([x["attention_mask"], torch.zeros(1, 5, dtype=torch.long)], 1)
    with torch.no_grad():
        a, b = model(task, **x), model(task, **padded)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def test_region_padding_is_masked_out(model):
    task = get_task("vqa")
    x = make_inputs(task, b=1)
    padded = dict(x)
    padded["region_features"] = torch.cat([x["region_features"], torch.randn(1, 4, F)], 1)
    padded["region_locations"] = torch.cat([x["region_locations"], torch.rand(1, 4, 5)], 1)
    padded["region_mask"] = torch.cat([x["region_mask"], torch.zeros(1, 4)], 1)
    with torch.no_grad():
        a, b = model(task, **x).logits, model(task, **padded).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        regions = model(get_task("refcoco"), **padded).logits
    assert (regions[0, R:] < -5000).all()  # padded regions get the -10000 mask


def test_nlvr2_pairs_are_explicit_and_work_for_odd_batches(model):
    task = get_task("nlvr2")
    x = make_inputs(task, b=3)
    with torch.no_grad():
        out = model(task, **x).logits
        swapped = dict(x)
        for k in ("region_features", "region_locations", "region_mask"):
            swapped[k] = x[k].flip(1)
        out_swapped = model(task, **swapped).logits
    assert out.shape == (3, 2)
    assert (out - out_swapped).abs().max() > 1e-5  # image order matters: [img0, img1] is concatenated
    with pytest.raises(ValueError, match=r"expects regions shaped \(B, 2, R, F\)"):
        model(task, **make_inputs(get_task("vqa")))


def test_cached_text_prefix_scores_like_the_full_forward(model):
    """Retrieval's fast path: one caption's text prefix broadcast against N images."""
    task = get_task("retrieval_coco")
    x = make_inputs(task, b=4)
    one_text = {k: x[k][:1].expand(4, -1) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        full = model(
            task,
            **one_text,
            region_features=x["region_features"],
            region_locations=x["region_locations"],
            region_mask=x["region_mask"],
        ).logits
        prefix = model.trunk.encode_text_prefix(
            x["input_ids"][:1], x["attention_mask"][:1], torch.tensor([task.task_id])
        )
        fast = model.score_against_images(
            task, prefix, x["region_features"], x["region_locations"], x["region_mask"]
        )
    torch.testing.assert_close(full, fast, atol=1e-5, rtol=1e-5)


def test_matches_an_independent_statement_of_the_official_forward():
    """Convert random official-named weights, then compare with a functional re-statement of the
    official forward (tests/vilbert/official_reference.py) on padded inputs: every output we keep."""
    cfg = preset("tiny", v_biattention_id=[0, 1], t_biattention_id=[1, 2])
    official = random_official_state_dict(cfg, seed=3)
    model = MultiTaskViLBERT(cfg).eval()
    model.load_state_dict(convert_official_state_dict(official, cfg))
    b, t, r = 4, 8, 6
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 3000, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 5:] = 0
    ids[mask == 0] = 0
    feats, locs = torch.randn(b, r, F, generator=g), torch.rand(b, r, 5, generator=g)
    rmask = torch.ones(b, r)
    rmask[2, 4:] = 0
    task_ids = torch.tensor([1, 9, 13, 15])
    with torch.no_grad():
        ref = official_forward(official, cfg, ids, feats, locs, mask, rmask, task_ids)
        trunk = model.trunk(ids, mask, task_ids, feats, locs, rmask)

        def ours(head):
            return model.head_logits(head, trunk, rmask, images=2 if head is Head.PAIR else 1)

        pairs = {
            "vil_prediction": ours(Head.ANSWER),
            "vil_prediction_gqa": ours(Head.ANSWER_GQA),
            "vil_logit": ours(Head.MATCH)[:, None],
            "vil_tri_prediction": ours(Head.TRIPLE),
            "vision_logit": ours(Head.REGION)[..., None],
            "vil_binary_prediction": ours(Head.PAIR),
        }
    for name, value in pairs.items():
        torch.testing.assert_close(value, ref[name], atol=2e-5, rtol=1e-4, msg=name)
