"""benchmarks/ablation.py end to end at a tiny budget: trains, measures, reports, and skips
finished runs when started again."""
import json

from benchmarks.ablation import TECHNIQUES, main, run_config
from vdmcodec.training.config import RunConfig


def test_ablation_runs_reports_and_resumes(tmp_path, mnist_path):
    out = tmp_path / "abl"
    argv = ["--quick", "--out", str(out), "--techniques", "baseline,learned_variance", "--steps", "2",
            "--val-images", "4", "--spread-batch", "2", "--spread-draws", "3", "--T", "4", "--no-progress",
            "--data", str(mnist_path)]
    first = main(argv)
    assert [r["name"] for r in first] == ["baseline", "learned_variance"]
    for r in first:
        assert r["steps"] == 2 and r["bpd_continuous"] > 0 and r["bpd_T4"] > 0 and r["elbo_estimator_std"] > 0
    text = (out / "ablation.md").read_text()
    assert "| baseline |" in text and "| learned_variance |" in text and "--quick" in text
    assert (out / "ablation.png").stat().st_size > 0
    stamp = (out / "baseline" / "checkpoint.pt").stat().st_mtime_ns
    again = main(argv)
    assert (out / "baseline" / "checkpoint.pt").stat().st_mtime_ns == stamp  # not retrained
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_every_technique_changes_only_its_own_options():
    base = RunConfig()
    cfgs = {n: run_config(base, t, "unet-16", 100, 64, 0) for n, t in TECHNIQUES.items()}
    ref = cfgs["baseline"]
    assert ref.train.objective.is_default and not ref.model.network.learned_variance
    for name, cfg in cfgs.items():
        assert (cfg.train.steps, cfg.train.batch_size, cfg.train.seed, cfg.model.network.channels) == (100, 64, 0, 16)
        same_train = cfg.train.objective == ref.train.objective
        same_model = cfg.model == ref.model
        assert name == "baseline" or not (same_train and same_model), name
