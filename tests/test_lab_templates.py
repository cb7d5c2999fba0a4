"""The README templates of the toy-world lab render every placeholder from constructed figures."""

from lora_audit.toyworld.lab.build import samples_readme
from lora_audit.toyworld.lab.evaluate import results_markdown

RANKING = {"similarity": 0.4321, "rank": 2}


def build_metrics() -> dict:
    summary = {"n": 2, "rank1": 0.5, "mean_similarity": 0.3456}
    finetune = {"num_class_images": 16, "rank": 8, "steps": 500, "lr": 0.002, "target_modules": ["to_q", "to_v"],
                "text_encoder_lora": True, "text_encoder_targets": ["q_proj"], "seed": 0}
    victim = {"layout": "kohya", "identity": 300000, "leaky_metadata": True, "trigger": "zwxq", "candidates": 20,
              "lora_with_trigger": RANKING, "base_class_prompt": {"similarity": -0.0123, "rank": 9},
              "finetune_seconds": 80.2}
    case = {"step": 500, "step_source": "estimate", "attack": RANKING, "base_generic": {"similarity": 0.011, "rank": 7},
            "consistency": 0.517}
    return {
        "embedder": {"training": {"params": 503584, "identities": 2000, "steps": 4000, "train_seconds": 1249.1},
                     "config": {"images_per_identity": 16}, "seconds": 110.5,
                     "evaluation": {"identities": 200, "clean": {"auc": 0.99995, "tar_at_far_1e-3": 0.9958, "rank1": 0.9989},
                                    "degraded": {"auc": 0.99992, "tar_at_far_1e-3": 0.9896, "rank1": 0.9972}}},
        "base": {"training": {"unet_parameters": 1687075, "text_encoder_parameters": 170624, "train_seconds": 1472.4},
                 "config": {"identities": 6000, "images_per_identity": 3, "steps": 1600, "batch_size": 16},
                 "judged_on": "20 unseen SHADOW identities", "caption_samples": {"rank1": 0.7, "mean_similarity": 0.2232},
                 "real_renders": {"rank1": 1.0}, "chance_rank1": 0.05, "seconds": 132.4},
        "victims": {"config": {"photos": 5, "samples_per_check": 8, "finetune": finetune},
                    "victims": {"toy_kohya_leaky": victim}, "seconds": 357.9,
                    "lora_with_trigger": {"mean_similarity": 0.079, "rank1": 0.5},
                    "base_class_prompt": {"mean_similarity": -0.0459, "rank1": 0.25}},
        "shadows": {"identities": 80, "config": {"photos": 5, "snapshot_steps": [50, 500]},
                    "finetune_seconds_total": 7680.4},
        "attack": {"seconds": 387.4,
                   "training": {"config": {"steps": 2000, "shadows_per_step": 8, "images_per_shadow": 2, "beta": 0.0001,
                                           "sketch_k": 16},
                                "held_out_identities": 8, "seconds": 1792.3, "step_estimate": {"median_relative_error": 0.118}},
                   "evaluation": {"held_out_shadows": {"k": 8, "candidates": 20, "attack": summary, "base_generic": summary},
                                  "victims": {"cases": {"toy_kohya_leaky": case}, "attack": summary, "base_generic": summary},
                                  "generic_consistency": {"mean": 0.073, "std": 0.026},
                                  "ridge_probe": {"held_out_shadows": {"rank1": 0.875}, "victims": {"rank1": 0.0}}}},
    }


def test_samples_readme_fills_every_placeholder():
    text = samples_readme(build_metrics(), {})
    assert "$" not in text
    assert "lora-audit toy build --jobs 2 --install ." in text
    assert "| `toy_kohya_leaky.safetensors` | kohya | 300000 | yes | `a face of zwxq` | 0.432 | 2 | -0.012 | 80.2 s |" in text
    assert "| `toy_kohya_leaky.safetensors` | 500 (estimate) | 0.432 | 2 | 0.011 | 7 | 0.517 |" in text
    assert "503,584 parameters" in text and "ROC AUC 0.99995" in text and "rank-1 88% on the held-out shadows" in text
    assert "to_q, to_v, plus a text-encoder LoRA on q_proj," in text and "snapshots at steps 50, 500; 7680 s" in text
    assert "chance rank-1 5%" in text and "0.073 +/- 0.026" in text and "(1472 s of training)" in text


def test_results_markdown_fills_every_placeholder():
    row = {"mean_similarity": 0.5, "rank1": 0.75, "mean_rank": 1.25, "tar": 0.5}
    summary = {"oracle": {**row, "mean_similarity": 0.625}, "latent_ceiling": row, "base": {**row, "rank1": 0.25},
               "vae": {**row, "mean_similarity": 0.25, "training_seconds": 1792.3, "seconds_per_lora": 4.56}}
    result = {"victims": [1, 2, 3, 4], "k": 8, "far": 0.05, "summary": summary}
    text = results_markdown(result, "lora-audit evaluate build/eval/private --latents 4")
    assert "$" not in text and "lora-audit evaluate build/eval/private --latents 4\n" in text
    assert "| VAE attack (weights only) | 0.250 | 75% | 1.25 | 50% | 1792.3 | 4.56 |" in text
    assert "| base model alone (chance level) | 0.500 | 25% | 1.25 | 50% | - | - |" in text
    assert "K = 8 images" in text and "chance rank-1 25%" in text and "TAR @ FAR 0.05 |" in text
    assert "share of the 12 (victim, other identity)" in text
    assert "oracle similarity: 0.40" in text and "keeps 0.80 of the oracle" in text and "reaches 0.50 of what" in text


def test_results_markdown_shows_intervals_the_verdict_and_the_steps_curve():
    row = {"mean_similarity": 0.5, "rank1": 0.75, "mean_rank": 1.25, "tar": 0.5,
           "mean_similarity_ci": [0.41, 0.58], "rank1_ci": [0.3, 0.95], "tar_ci": [0.15, 0.85]}
    summary = {"oracle": row, "latent_ceiling": row, "base": row, "vae": row}
    verdict = {"owner_far": 0.01, "photos": 5, "impostors": 200, "n": 4, "tpr": 0.75, "tpr_ci": [0.3, 0.95],
               "fpr": 0.0, "fpr_ci": [0.0, 0.49]}
    steps = {50: {"rank1": 0.25, "rank1_ci": [0.05, 0.7], "mean_similarity": 0.1, "n": 4},
             500: {"rank1": 0.75, "rank1_ci": [0.3, 0.95], "mean_similarity": 0.5, "n": 4}}
    result = {"victims": [1, 2, 3, 4], "k": 8, "far": 0.05, "summary": summary, "verdict": verdict, "steps": steps}
    text = results_markdown(result, "lora-audit evaluate v")
    assert "| VAE attack (weights only) | 0.500 [0.410, 0.580] | 75% [30%, 95%] | 1.25 | 50% [15%, 85%] |" in text
    assert "true-positive rate 75% [30%, 95%], false-positive rate 0% [0%, 49%] (n = 4" in text
    assert "at most 0.01 of 200 other identities' photo sets" in text and "views 100-104" in text
    assert "| 50 | 25% [5%, 70%] | 0.100 |" in text and "| 500 | 75% [30%, 95%] | 0.500 |" in text
    assert "one\nvictim moves rank-1 by 25%" in text
