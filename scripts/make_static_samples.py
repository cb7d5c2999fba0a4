"""Write the small synthetic sample LoRA files used by the README quickstart.

Fixed seeds, so rerunning gives byte-identical files:
  sd15_kohya_leaky.safetensors  kohya SD1.5, rank 4, attention q/k/v/out subset, F16, leaky training
                                metadata with a cover image
  sd15_peft_clean.safetensors   diffusers/PEFT SD1.5, only the metadata diffusers itself writes
  sdxl_kohya.safetensors        kohya SDXL (SGM block names), BF16, a little metadata with an absolute
                                base-model path
"""

import argparse
from pathlib import Path

from lora_audit.synthetic import clean_metadata, leaky_kohya_metadata, make_lora, save_lora, to_kohya, to_peft


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic sample LoRA files.")
    parser.add_argument("--out", type=Path, default=Path("weights_samples"), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    sd15 = make_lora("sd15", rank=4, alpha=1, max_modules=48, seed=1, dtype="F16")
    leaky = leaky_kohya_metadata(name="jane doe", trigger="sks", with_cover_image=True, rank=4, alpha=1)
    save_lora(args.out / "sd15_kohya_leaky.safetensors", to_kohya(sd15), leaky)

    peft = make_lora("sd15", rank=4, max_modules=32, seed=2, dtype="F16")
    save_lora(args.out / "sd15_peft_clean.safetensors", *to_peft(peft))

    sdxl = make_lora("sdxl", rank=8, alpha=4, max_modules=16, seed=3, dtype="BF16")
    sdxl_metadata = {
        **clean_metadata("sdxl", rank=8, alpha=4),
        "ss_output_name": "watercolor_style_xl",
        "ss_sd_model_name": "/home/jane/models/sd_xl_base_1.0.safetensors",
    }
    save_lora(args.out / "sdxl_kohya.safetensors", to_kohya(sdxl), sdxl_metadata, dtype="BF16")

    for path in sorted(args.out.glob("*.safetensors")):
        print(f"{path}  {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
