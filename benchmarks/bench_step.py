"""One full DuPL training step per phase (forward, losses, backward, AdamW step).

CPU: test_vit at 224 px, batch 4. CUDA (when available): also ViT-B/16 (deit_base, random init)
at 448 px, batch 4, bf16 autocast. Prints seconds per step (median of timed steps after warm-up)
and peak memory. Usage: python benchmarks/bench_step.py [--steps 3] [--skip-cpu]
"""

from __future__ import annotations

import argparse
import resource
import statistics

import torch
from step_timing import synthetic_batch, timed_steps

from dupl_cli.config.method_params import step_config
from dupl_cli.config.schema import VOC_TAU_END_PER_CLASS, DuplSettings, ModelSettings
from dupl_cli.models.dual import build_dual_student
from dupl_cli.train.optim import build_optimizer

PHASES = {"A": 0, "B": 4000, "C": 12000}


def bench(arch: str, size: int, device: torch.device, *, steps: int, bf16: bool) -> list[tuple]:
    settings = DuplSettings(
        model=ModelSettings(arch=arch, pretrained="none"),
        method={"tau_high_end": list(VOC_TAU_END_PER_CLASS), "anf": {"min_pixels": 100}},
    )
    torch.manual_seed(0)
    model = build_dual_student(settings.model, 20, img_size=size).to(device)
    opt = build_optimizer(model, settings.train)
    config = step_config(settings)
    batch = synthetic_batch(4, size, device, padded=True)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for phase, t in PHASES.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = timed_steps(model, batch, t, config, opt, gen, steps=steps, warmup=1, bf16=bf16)
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
            unit = "GiB GPU"
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            unit = "GiB RSS (process max)"
        rows.append(
            (
                arch,
                size,
                device.type,
                "bf16" if bf16 else "fp32",
                phase,
                statistics.median(times),
                times,
                peak,
                unit,
            )
        )
        print(
            f"{arch:>22} {size:4d} {device.type:>4} {'bf16' if bf16 else 'fp32'} phase {phase}: "
            f"{statistics.median(times):.3f} s/step (steps {', '.join(f'{x:.3f}' for x in times)}), "
            f"peak {peak:.2f} {unit}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_cpu:
        bench("test_vit", 224, torch.device("cpu"), steps=args.steps, bf16=False)
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        bench("deit_base_patch16_224", 448, torch.device("cuda"), steps=args.steps, bf16=True)


if __name__ == "__main__":
    main()
