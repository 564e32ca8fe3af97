"""benchmarks/holo_claims.py: the quick setting runs end to end, writes records with every field,
accuracies lie in [0, 1], and a run repeats bit for bit (fixed seeds)."""

import json

import torch

from benchmarks import holo_claims as H
from train.holo_transformer import HoloConfig

FIELDS = {"task", "model", "layers", "accuracy", "test_loss", "steps", "seconds", "params", "state_sizes",
          "state_at_T", "seq_len", "vocab_size", "precision"}


def test_quick_run_writes_complete_records(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert H.main(["--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    records = json.loads((tmp_path / "holo_claims-cpu-quick.json").read_text())
    meta, rows = records[0], records[1:]
    assert meta["task"] == "meta" and meta["command"].startswith("python -m benchmarks.holo_claims")
    assert {(r["task"], r["model"]) for r in rows} == {(t, m) for t in ("mqar", "reversal", "needle") for m in H.MODELS}
    s = H.SETTINGS["quick"]
    for r in rows:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["steps"] == s.steps and r["params"] > 0
        assert len(r["state_sizes"]) == len(r["layers"]) == s.n_layers
        for kind, size in zip(r["layers"], r["state_sizes"]):  # holographic: constant; softmax: 2·T·C
            assert size == (2 * s.hd_dim + 1 if kind == "holographic" else 2 * r["seq_len"] * s.dim)
    assert [r["layers"] for r in rows[:3]] == [["holographic"] * 2, ["holographic", "softmax"], ["softmax_attention"] * 2]
    md = (tmp_path / "holo_claims-cpu-quick.md").read_text()
    assert "| task | model |" in md and md.count("\n| ") == 1 + len(rows)


def test_runs_repeat_and_the_wrapper_keeps_the_logits(tmp_path):
    threads = torch.get_num_threads()
    try:
        for name in ("a", "b"):
            H.main(["--quick", "--tasks", "reversal", "--models", "hybrid", "--out", str(tmp_path / name)])
    finally:
        torch.set_num_threads(threads)
    a, b = (json.loads((tmp_path / n / "holo_claims-cpu-quick.json").read_text())[1] for n in ("a", "b"))
    for key in ("accuracy", "test_loss", "train_loss_first", "train_loss_last_tenth"):
        assert a[key] == b[key], key
    model = H.build("hybrid", H.SETTINGS["quick"], 16, 17, 0).double()
    x = torch.randint(16, (2, 17), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.hidden(x) @ model.embed.weight.T, model.net(x))
    assert isinstance(model.net.config, HoloConfig) and model.net.config.attn_layers == (1,)
