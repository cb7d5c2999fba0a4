"""The defences' evaluation harness on a tiny budget: every run judged, resumable, summarised with intervals."""

import json

import numpy as np
import pytest

from lora_audit.diffusion.dp import DPConfig
from lora_audit.diffusion.finetune import FinetuneConfig
from lora_audit.toyworld.lab.defences import DefenceConfig, defences_markdown, kid, plot_leak_against_utility, run_defences


def test_kid_is_zero_in_expectation_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    same = [kid(rng.normal(size=(100, 8)), rng.normal(size=(100, 8))) for _ in range(100)]
    assert abs(np.mean(same)) < 3 * np.std(same) / 10  # unbiased: zero within its standard error
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert kid(a, b + 1.0) > 1.0 > kid(a, b + 0.2) > 0.05 > kid(a, b)


@pytest.mark.slow
def test_defence_evaluation_runs_every_setting_and_resumes(tmp_path):
    config = DefenceConfig(identities=2, epsilons=(None, 8.0), photos=2, steps=2, samples=2, latents=1,
                           sampling_steps=2, finetune=FinetuneConfig(steps=2, num_class_images=2, class_sampling_steps=2),
                           dp=DPConfig(epsilon=1.0, sample_rate=0.5))
    seen = []
    summary = run_defences(tmp_path, config, progress=lambda d, t, m: seen.append((d, t, m["setting"])))
    assert [d for d, _, _ in seen] == [1, 2, 3, 4, 5, 6, 7, 8] and seen[-1][1] == 8
    rows = {r["setting"]: r for r in summary["settings"]}
    assert set(rows) == {"lora-nodp", "loda-nodp", "lora-eps8", "loda-eps8"}
    assert rows["lora-nodp"]["epsilon_spent"] is None
    assert 7.0 < rows["loda-eps8"]["epsilon_spent"] <= 8.0 and rows["loda-eps8"]["steps"] == 2
    for row in rows.values():
        low, high = row["attack_rank1"]["interval"]
        assert 0 <= low <= row["attack_rank1"]["rate"] <= high <= 1 and row["chance_rank1"] == 0.5
        assert row["seconds_per_step"]["mean"] > 0 and row["peak_rss_mb"] > 0
    run = json.loads((tmp_path / "loda-eps8" / "302000.json").read_text())
    assert run["privacy"]["privacy_unit"].startswith("one training image") and len(run["oracle_features"]) == 2
    assert (tmp_path / "loda-eps8" / "302000.safetensors").is_file()
    # resume: nothing is re-run, the summary is the same
    again = run_defences(tmp_path, config, progress=lambda *a: pytest.fail("a finished run was repeated"))
    assert json.loads(json.dumps(again["settings"])) == json.loads(json.dumps(summary["settings"]))
    # a summary of what is done so far: settings with fewer than two identities are left out
    (tmp_path / "loda-eps8" / "302001.json").unlink()
    partial = run_defences(tmp_path, config, run=False)
    assert [r["setting"] for r in partial["settings"]] == ["lora-nodp", "loda-nodp", "lora-eps8"]
    # another recipe is not mixed into these runs
    from lora_audit.errors import InputError
    with pytest.raises(InputError, match="another recipe"):
        run_defences(tmp_path, DefenceConfig(**{**config.__dict__, "steps": 3}))
    table = defences_markdown(summary)
    assert table.count("\n") == 2 + 4 and "no DP" in table and "8 (" in table
    assert plot_leak_against_utility(summary, tmp_path / "plot.png").stat().st_size > 1000
