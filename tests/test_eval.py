"""Evaluation layer: evaluate a checkpoint, reference-statistics cache, bench report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ecar
from ecar.autoencoders import IdentityAutoencoder
from ecar.bench import run_bench, sweep_settings
from ecar.cli import main
from ecar.config import SampleConfig
from ecar.eval.evaluate import VALID_METRICS, evaluate_checkpoint, evaluate_model, fid_of_images
from ecar.eval.features import FeatureExtractor, default_feature_net, load_feature_net, quantize
from ecar.eval.reference import reference_stats
from ecar.methods import apply_sample_overrides

ROOT = Path(__file__).resolve().parents[1]


def _pipe(model, cfg):
    return ecar.Pipeline(model, cfg, IdentityAutoencoder(1))
TINY = [
    "model.hidden=32", "model.depth=1", "model.heads=2", "train.max_steps=3",
    "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1",
    "train.tensorboard=false", "sample.steps=2",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Never touch ~/.cache: the default cache root points into the test's tmp dir."""
    monkeypatch.setenv("ECAR_CACHE", str(tmp_path / "ecar-cache"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "dit"
    assert main(["train", "--quiet", "--config", str(ROOT / "configs" / "digits_dit.yaml"),
                 "--out", str(run), *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("refstats")


def test_evaluate_checkpoint_is_seeded_and_reuses_the_reference_cache(tiny_run, tmp_path):
    cache = tmp_path / "cache"
    kw = dict(n=64, cache_dir=cache, device="cpu", progress=False)
    a = evaluate_checkpoint(tiny_run, seed=0, **kw)
    for key in ("fid", "is", "is_std", "precision", "recall"):
        assert isinstance(a[key], float) and np.isfinite(a[key]), key
    assert a["features"] == "digits" and a["n"] == 64 and a["seed"] == 0
    assert a["steps"] == 2 and a["sampler"] == "euler" and a["train_step"] == 3
    assert 0.0 <= a["precision"] <= 1.0 and 0.0 <= a["recall"] <= 1.0
    json.dumps(a)  # the result is plain JSON

    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and a["reference"]["cache_hit"] is False
    assert a["reference"]["path"] == str(files[0]) and a["reference"]["n_images"] == 300
    assert a["reference_split"] == "heldout"  # digits: the 300 images never trained on
    mtime = files[0].stat().st_mtime_ns

    b = evaluate_checkpoint(tiny_run, seed=0, **kw)
    assert b["reference"]["cache_hit"] is True
    assert list(cache.glob("*.npz")) == files and files[0].stat().st_mtime_ns == mtime
    for key in ("fid", "is", "is_std", "precision", "recall"):
        assert a[key] == b[key], key

    c = evaluate_checkpoint(tiny_run, seed=1, metrics=("fid",), **kw)
    assert c["fid"] != a["fid"]
    assert "is" not in c and "precision" not in c


def test_sample_overrides_reach_the_sampler(tiny_run, shared_cache):
    r = evaluate_checkpoint(tiny_run, n=16, metrics="fid", cache_dir=shared_cache, device="cpu",
                            progress=False, sample_overrides={"steps": 3, "cfg": None})
    assert r["steps"] == 3 and r["cfg"] == 2.0  # None leaves the shipped value
    with pytest.raises(ValueError, match="Valid keys of 'sample'"):
        evaluate_checkpoint(tiny_run, n=16, device="cpu", sample_overrides={"stepz": 3})
    with pytest.raises(ValueError, match="sample.steps=0 is not valid: it must be >= 1"):
        apply_sample_overrides(SampleConfig(), ["steps=0"])


def test_cli_sample_and_eval_validate_sampler_flags_alike(tiny_run, tmp_path, capsys):
    """`ecar sample` and `ecar eval` take the same flags through the same validation: a
    setting the checkpoint's method does not have is an error naming the valid ones."""
    for cmd in (["sample", "--out", str(tmp_path / "g.png")], ["eval", "--n", "8"]):
        assert main([*cmd, "--ckpt", str(tiny_run), "--stage-steps", "2,2"]) == 2
        err = capsys.readouterr().err
        assert "sample.stage_steps" in err and "for method dit" in err and "Valid keys of 'sample'" in err
        assert main([*cmd, "--ckpt", str(tiny_run), "--steps", "0"]) == 2
        assert "sample.steps=0 is not valid: it must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_unknown_metric_names_the_valid_ones():
    with pytest.raises(ValueError, match="fid, is, pr, acc"):
        evaluate_model(None, metrics=("fid", "kid"))
    assert VALID_METRICS == ("fid", "is", "pr", "acc")


def test_class_accuracy_is_the_classifiers_agreement_with_the_requested_labels(tiny_run, shared_cache):
    from ecar.eval.features import features_of_images

    pipe = ecar.load(tiny_run)
    res = evaluate_model(pipe, n=40, metrics="accuracy", batch_size=40, seed=3, progress=False,
                         cache_dir=shared_cache)
    assert "acc" in res and "fid" not in res
    # the same 40 images (block 0 of seed 3), classified by the shipped digits net
    labels = pipe.labels(40)
    images = pipe(labels=labels, seed=3 * 1_000_003, batch_size=40).tensor
    _, probs = features_of_images(images, load_feature_net("digits"), "cpu")
    expected = float((torch.from_numpy(probs).argmax(1) == labels).float().mean())
    assert res["acc"] == pytest.approx(expected)
    # barely trained: some right, some wrong, so a mix-up of labels and images would show
    assert 0 < res["acc"] < 1


def test_class_accuracy_without_a_classifier_is_skipped_with_a_note(tiny_run, shared_cache):
    class NoHead(FeatureExtractor):
        name, feature_dim = "nohead", 4

        def _prepare_module(self, device):
            pass

        def _forward(self, x):
            return x.flatten(1)[:, :4].double() + 0.01 * torch.randn(len(x), 4, dtype=torch.float64), None

    res = evaluate_model(ecar.load(tiny_run), n=8, metrics="fid,acc", features=NoHead(), progress=False,
                         cache_dir=shared_cache)
    assert "acc" not in res and "fid" in res
    assert any("class accuracy skipped" in note for note in res["notes"])


def test_default_feature_net():
    assert default_feature_net("digits") == "digits"
    assert default_feature_net("shapes") == "shapes"
    assert default_feature_net("fashion-mnist") == "fashion"
    assert default_feature_net("fashion-mini") == "fashion"
    assert default_feature_net("imagefolder:/data/imagenet") == "inception"


def test_heldout_fid_is_far_below_noise_fid(shared_cache):
    from ecar.data import build_dataset

    ref = reference_stats("digits", "digits", cache_dir=shared_cache, split="train")
    dim = load_feature_net("digits").feature_dim  # spatial mode: 16·8 layout + 3·32 texture
    assert dim == 224
    assert ref["feats"].shape == (1497, dim) and ref["mu"].shape == (dim,)
    heldout = build_dataset("digits", split="heldout")
    real = torch.stack([heldout[i][0] for i in range(len(heldout))])
    noise = torch.rand(len(heldout), 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fid_real = fid_of_images(real, ref, "digits")
    fid_noise = fid_of_images(noise, ref, "digits")
    assert fid_real < 0.05 * fid_noise, (fid_real, fid_noise)
    # uint8 N×H×W×C input goes through the same path (quantisation is idempotent)
    assert fid_of_images(heldout.images_uint8(), ref, "digits") == pytest.approx(fid_real, rel=1e-6)


def test_reference_cache_with_a_wrong_key_is_recomputed(tmp_path):
    from ecar.data import build_dataset

    ds = build_dataset("digits", split="heldout")  # small: 300 images
    net = load_feature_net("digits")
    first = reference_stats(ds, net, cache_dir=tmp_path)
    assert first["cache_hit"] is False
    path = Path(first["path"])
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["key"] = np.array(str(arrays["key"]).replace("digits", "digitz"))
    arrays["mu"] = arrays["mu"] + 1.0
    np.savez(path, **arrays)
    again = reference_stats(ds, net, cache_dir=tmp_path)
    assert again["cache_hit"] is False
    np.testing.assert_array_equal(again["mu"], first["mu"])
    assert reference_stats(ds, net, cache_dir=tmp_path)["cache_hit"] is True
    # the default location follows $ECAR_CACHE (set by the autouse fixture)
    default = reference_stats(ds, net)
    assert Path(default["path"]).parent == tmp_path / "ecar-cache" / "refstats"


class _NoClassifier(FeatureExtractor):
    """Digits features without class probabilities (like Inception here)."""

    def __init__(self):
        self.inner = load_feature_net("digits")
        self.name, self.feature_dim, self.batch_size = "digits-noprobs", self.inner.feature_dim, 256

    def _prepare_module(self, device):
        self.inner._prepare_module(device)

    def _forward(self, x):
        return self.inner._forward(x)[0], None


def test_inception_score_is_skipped_with_a_note_without_classifier(tiny_run, shared_cache):
    r = evaluate_model(ecar.load(tiny_run, "cpu"), n=32, features=_NoClassifier(), cache_dir=shared_cache,
                       progress=False)
    assert "is" not in r and any(note.startswith("is:") for note in r["notes"])
    assert r["features"] == "digits-noprobs" and np.isfinite(r["fid"]) and "precision" in r


def test_quantize_rounds_to_uint8_levels():
    x = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 7.0]).view(1, 1, 2, 3)
    q = quantize(x)
    levels = (q + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert q.min() == -1.0 and q.max() == 1.0


def test_sweep_scales_shipped_steps():
    from ecar.build import LatentSpec, build_model
    from ecar.config import load_config

    dit_cfg = load_config(ROOT / "configs" / "digits_dit.yaml")
    got = [s["setting"] for s in sweep_settings(_pipe(torch.nn.Linear(1, 1), dit_cfg), (0.1, 0.2, 0.5, 1, 2))]
    assert got == ["shipped", "euler steps=5", "euler steps=10", "euler steps=25", "euler steps=100"]
    both = sweep_settings(_pipe(torch.nn.Linear(1, 1), dit_cfg), (0.08, 1), samplers=("euler", "heun"))
    assert [s["setting"] for s in both] == ["shipped", "euler steps=4", "heun steps=4", "heun steps=50"]
    assert both[2]["sample"].sampler == "heun" and both[2]["sample"].steps == 4

    cfg = load_config(ROOT / "configs" / "digits_ecar.yaml", ["model.hidden=32", "model.heads=2"])
    model, _ = build_model(cfg, LatentSpec(1, 16, 10))
    settings = sweep_settings(_pipe(model, cfg), (0.1, 0.2, 0.5, 1.0, 2.0))
    assert [s["setting"] for s in settings] == [
        "shipped", "euler steps=1,1,1", "euler steps=2,2,1", "euler steps=5,4,3", "euler steps=20,16,12"]
    assert settings[3]["sample"].stage_steps == [5, 4, 3] and settings[3]["scale"] == 0.5
    assert cfg.sample.stage_steps == [10, 8, 6]  # the shipped config is not modified
    with pytest.raises(ValueError, match="> 0"):
        sweep_settings(_pipe(model, cfg), (0.0,))
    with pytest.raises(ValueError, match="unknown sampler"):
        sweep_settings(_pipe(model, cfg), (1.0,), samplers=("rk4",))


def test_bench_writes_json_markdown_and_plot(tmp_path, shared_cache):
    out = tmp_path / "bench"
    configs = [str(ROOT / "configs" / "digits_dit.yaml"), str(ROOT / "configs" / "digits_ecar.yaml")]
    rows = run_bench(configs, None, train_minutes=0.05, out=str(out),
                     overrides=TINY + ["sample.stage_steps=null"], n_eval=64, step_sweep=(0.5,),
                     device="cpu", progress=False, cache_dir=shared_cache, cost_batch=8, cost_repeats=1,
                     seeds=(0, 1), samplers=("euler", "heun"))
    doc = json.loads((out / "bench.json").read_text())
    assert doc["rows"] == json.loads(json.dumps(rows))
    assert doc["meta"]["torch"] == torch.__version__ and doc["meta"]["args"]["train_minutes"] == 0.05
    assert "ecar bench" in doc["meta"]["command"] and doc["meta"]["date"]
    assert "--seeds 0,1" in doc["meta"]["command"] and "--samplers euler,heun" in doc["meta"]["command"]
    names = {r["name"] for r in rows}
    assert names == {"digits_dit", "digits_ecar"}
    by = {(r["name"], r["setting"]): r for r in rows}
    assert {"shipped", "euler steps=1", "heun steps=1"} <= {s for n, s in by if n == "digits_dit"}
    assert ("digits_ecar", "heun steps=1,1,1") in by
    assert by[("digits_ecar", "shipped")]["mode"] == "ecar" and by[("digits_dit", "shipped")]["mode"] == "dit"
    for r in rows:
        for key in ("params", "train_steps", "train_seconds", "steps", "fid_mean", "fid_std", "precision",
                    "recall", "gflops_per_image", "seconds_per_image", "reference_split"):
            assert r[key] is not None, (r["name"], r["setting"], key)
        assert r["train_steps"] <= 3
        assert r["seeds"] == [0, 1] and len(r["fid_per_seed"]) == 2
        assert r["fid_per_seed"][0] != r["fid_per_seed"][1]  # the seeds draw different samples
        assert r["fid_mean"] == pytest.approx(sum(r["fid_per_seed"]) / 2)
        assert r["reference_split"] == "heldout"  # digits has a held-out split
    # Heun's final step (ending at t = 1) is an Euler step: one Heun step costs one evaluation
    assert by[("digits_dit", "heun steps=1")]["gflops_per_image"] == pytest.approx(
        by[("digits_dit", "euler steps=1")]["gflops_per_image"], rel=1e-6)
    # the headline: per method, its equal-quality ratio against the other model
    eq = doc["methods"]["digits_ecar"]["equal_quality_vs_digits_dit"]
    for key in ("gflops_ratio", "seconds_ratio", "bound"):
        assert key in eq
    assert eq["bound"] in (None, ">", "<") and eq["gflops_ratio"] > 0

    md = (out / "bench.md").read_text()
    assert "digits_dit" in md and "digits_ecar" in md and "FID" in md and "Equal quality" in md
    assert "heldout" in md
    img = Image.open(out / "bench.png")
    assert img.format == "PNG" and img.size[0] > 400
    # the cost anatomy: every row's parts add up to its GFLOPs; the report shows the shipped split
    for r in doc["rows"]:
        a = r["anatomy"]
        assert sum(u[p] for u in a["units"] for p in ("backbone", "head", "guidance")) == pytest.approx(
            r["gflops_per_image"], rel=1e-6)
    ecar_shipped = next(r for r in doc["rows"] if r["name"] == "digits_ecar" and r["setting"] == "shipped")
    assert len(ecar_shipped["anatomy"]["units"]) == 3 and ecar_shipped["anatomy"]["parts"]["head"] > 0
    assert "Where the FLOPs go" in md and "| digits_ecar | 3 of 3 |" in md
    assert Image.open(out / "anatomy.png").format == "PNG"
    with pytest.raises(FileExistsError, match="already holds the output of an earlier `ecar bench`"):
        run_bench(configs[:1], None, train_minutes=0.05, out=str(out), overrides=TINY, n_eval=64,
                  progress=False, cache_dir=shared_cache)


def test_cli_eval_writes_json_and_is_reproducible(tmp_path, capsys):
    import json as _json

    from ecar.cli import main as cli_main

    run = tmp_path / "run"
    assert cli_main(["train", "--quiet", "--config", "configs/digits_dit.yaml", "--out", str(run),
                     "model.hidden=32", "model.depth=1", "model.heads=2", "train.batch_size=8",
                     "train.max_steps=2", "train.tensorboard=false", "sample.steps=2"]) == 0
    outs = []
    for i in range(2):
        path = tmp_path / f"e{i}.json"
        assert cli_main(["eval", "--ckpt", str(run), "--n", "40", "--json", str(path)]) == 0
        outs.append(_json.loads(path.read_text()))
    for key in ("fid", "is", "precision", "recall", "features"):
        assert key in outs[0], key
    assert outs[0]["features"] == "digits"
    assert outs[0]["fid"] == outs[1]["fid"] and outs[0]["precision"] == outs[1]["precision"]
    assert cli_main(["eval", "--ckpt", str(run), "--metrics", "fid,xyz"]) == 2
    assert "valid metrics" in capsys.readouterr().err
