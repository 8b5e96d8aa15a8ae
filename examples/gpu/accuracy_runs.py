"""The accuracy ablation (issue #6) as one time-boxed GPU job: every run shares one GPU, concurrently.

    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64.tgz $OUT --budget 480
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64.tgz $OUT --budget 500 --runs w5-long --max-epochs 400
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64a.tgz $OUT --budget 520 --runs kd-pool-w5,w5-rk4x4 --max-epochs 200 --overhead 1.35
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64a.tgz $OUT --budget 450 --runs w5-wide-rk4x4 --max-epochs 99 --overhead 1.35
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64a.tgz $OUT --budget 272 --runs w5-rk4x4-color4 --max-epochs 99 --overhead 1.2   # 86 of 96 epochs: 1.2 was too low
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64a.tgz $OUT --budget 375 --runs w5-res-rk4x4 --max-epochs 99
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64a.tgz $OUT --budget 390 --runs w5-wide-rk4x4-color4 --max-epochs 99    # 362 s
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64a.tgz $OUT --budget 300 --runs w5-rk4x4-nolabel --max-epochs 99     # 81 epochs fit

One run longer than a call (a call runs at most 10 minutes) takes a fixed schedule and spans two calls of one
session: the second follows at once, while the machine is still warm (it goes back after 30 s idle), and the run
continues in place from its last.pt. A fresh machine cannot take it over: a call carries at most 64 MiB, and the
pack (46 MB) with the working tree (13 MB) leaves no room for a last.pt with its optimizer state (13 MiB at width 160; about 17 with a weight average).
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64a.tgz $OUT --budget 500 --runs w5-wide-rk4x4-color4-e180 --epochs 180
    PYTHONPATH=. python examples/gpu/accuracy_runs.py carry/pins64a.tgz $OUT --budget 250 --runs w5-wide-rk4x4-color4-e180 --epochs 180 --resume

The pack decides the input: ``pins64.tgz`` holds the plain crops, ``pins64a.tgz`` the aligned chips of
``edgenode align`` (pack_pins.py on the aligned copy); runs trained on the latter record the alignment.

A session gets 15 minutes of GPU time, so the job sizes itself: it times a few training steps of each recipe,
picks the number of epochs that fits all runs into ``--budget`` seconds, runs them side by side (small models
leave most of an H100 idle), stops any run still going at the deadline (best.pt is written on every
improvement, so nothing finished is lost), and packs each run's best checkpoint (optimizer state dropped), the
best checkpoint of its weight average (``best-ema.pt``, with ``--set ema_decay=…``), metrics and curves into
``<out>/<run>.tgz``. Accuracy is measured again on the original images afterwards:
    examples/pins_pipeline.sh and examples/accuracy_report.py.
"""

from __future__ import annotations

import time

STARTED = time.time()  # the budget counts from here: importing torch (seconds on a cold machine) is part of the call

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import torch

# recipe name -> TrainConfig overrides (data, manifest and epochs are filled in below)
# A call with time to spare adds --set ema_decay=0.998: its runs also score a moving average of their weights on val
# (edgenode.ema), a lever measured without a run of its own. The trained weights, best.pt and every training and val
# figure are those the run would have without it; only the time grows, by one val pass an epoch.
COMMON = dict(arch="faceode", batch_size=256, lr=2e-3, weight_decay=0.05, schedule="cosine", warmup_epochs=2,
              label_smoothing=0.1, augment=True, amp=True, progress=False, table_every=0)
KD_POOL = dict(teacher="{pack}/teacher.npz", unlabeled=True, near_duplicates="{pack}/near_duplicates.tsv")  # + the pool
W5 = dict(KD_POOL, distill_weight=5.0)  # the final recipe of the ablation
W5_RK4X4 = dict(W5, steps=4)  # the shipped aligned model's recipe
RECIPES = {
    "ce": dict(seed=0),
    "kd": dict(seed=0, teacher="{pack}/teacher.npz"),
    "kd-pool-s0": dict(KD_POOL, seed=0),
    "kd-pool-s1": dict(KD_POOL, seed=1),
    "kd-pool-s2": dict(KD_POOL, seed=2),
    "kd-pool-w5": dict(W5, seed=0),
    # next steps (RESULTS.md): the same recipe trained far longer, wider, and with a finer training solver
    "w5-long": dict(W5, seed=0),
    "w5-wide": dict(W5, seed=0, width=160),
    "w5-rk4x4": dict(W5_RK4X4, seed=0),
    "w5-wide-rk4x4": dict(W5_RK4X4, seed=0, width=160),
    "w20-rk4x4": dict(W5_RK4X4, seed=0, distill_weight=20.0),
    "w5-rk4x4-s1": dict(W5_RK4X4, seed=1),
    "w5-rk4x4-s2": dict(W5_RK4X4, seed=2),
    # KL towards the mean probabilities of aligned runs (a pack made with pack_pins.py --kd-targets: three runs until
    # the eight-run targets of RESULTS.md's GPU plan)
    "ens-kd-rk4x4": dict(W5_RK4X4, seed=0, kd_targets="{pack}/kd-targets.npz"),
    # the shipped recipe with augmentation shifts of 2 px instead of 8: the teacher's targets stay valid for the views
    # the student sees (examples/teacher_consistency.py)
    "w5-rk4x4-shift2": dict(W5_RK4X4, seed=0, augment_shift=0.03125),
    "w5-rk4x4-shift2-s1": dict(W5_RK4X4, seed=1, augment_shift=0.03125),
    # the shipped recipe plus colour jitter (brightness, contrast, saturation ±40 %, grayscale 1 in 5): a regulariser
    # the teacher agrees with (its descriptors keep a cosine of 0.93 to the stored targets: teacher_consistency.py)
    "w5-rk4x4-color4": dict(W5_RK4X4, seed=0, augment_color=0.4),
    "w5-rk4x4-color4-s1": dict(W5_RK4X4, seed=1, augment_color=0.4),
    "w5-wide-rk4x4-s1": dict(W5_RK4X4, seed=1, width=160),
    "w5-wide-rk4x4-color4": dict(W5_RK4X4, seed=0, width=160, augment_color=0.4),
    # the two together are the leader (val 0.919, test 0.924 against the control's 0.887 / 0.910, seed 0): its other
    # seeds, each to be paired with the control of the same seed (w5-rk4x4-s1, -s2) at the same length
    "w5-wide-rk4x4-color4-s1": dict(W5_RK4X4, seed=1, width=160, augment_color=0.4),
    "w5-wide-rk4x4-color4-s2": dict(W5_RK4X4, seed=2, width=160, augment_color=0.4),
    "w5-wide-rk4x4-shift2": dict(W5_RK4X4, seed=0, width=160, augment_shift=0.03125),
    # the leader on a schedule 1.8x as long, one run over two calls of a session (--epochs 180, then --resume): at
    # 99 epochs its teacher loss was still falling (1.50 at epoch 80, 1.43 at 99); at width 128 without colour
    # jitter, 121 epochs fitted the teacher closer than 99 (cosine 0.756 / 0.729 against 0.723 / 0.703, train / test)
    # but bought no test accuracy (RESULTS.md, "121 epochs buy nothing over 99")
    "w5-wide-rk4x4-color4-e180": dict(W5_RK4X4, seed=0, width=160, augment_color=0.4, epochs=180),
    # capacity again with colour jitter: width 192 (1.61 M parameters, 5.73 GFLOP per image at RK4 x 4, 1.44x width 160); its
    # last.pt (18 MiB) is over what a call brings back, so a run over two calls must find the machine warm
    "w5-w192-rk4x4-color4": dict(W5_RK4X4, seed=0, width=192, augment_color=0.4),
    # the leader with CosFace's margin (0.2 in cosine) in the labels' cross-entropy: training asks each face to sit
    # that much closer to its own class than to any other; evaluation stays plain argmax (RESULTS.md, CPU pilot)
    "w5-wide-rk4x4-color4-m02": dict(W5_RK4X4, seed=0, width=160, augment_color=0.4, margin=0.2),
    # the same margin at a fixed scale (--margin-scale, as CosFace fixes it): under the learned scale a margin pulled the
    # scale down (26.5 -> 9.5 in the CPU pilot) and shrank itself with it. At 16 the pilot kept the teacher's fit, at 30
    # it lost some (RESULTS.md)
    "w5-wide-rk4x4-color4-m02-scale16": dict(W5_RK4X4, seed=0, width=160, augment_color=0.4, margin=0.2, margin_scale=16.0),
    "w5-wide-rk4x4-color4-m02-scale30": dict(W5_RK4X4, seed=0, width=160, augment_color=0.4, margin=0.2, margin_scale=30.0),
    # depth beside the ODE block: three residual blocks (edgenode.model.build_faceode_res), +18 % multiply-adds at
    # width 128 against width 160's +56 %; width 160 fitted the teacher's descriptors closer (cosine +0.03)
    "w5-res-rk4x4": dict(W5_RK4X4, seed=0, arch="faceode-res"),
    "w5-res-rk4x4-color4": dict(W5_RK4X4, seed=0, arch="faceode-res", augment_color=0.4),
    "w5-res-rk4x4-s1": dict(W5_RK4X4, seed=1, arch="faceode-res"),
    # the teacher alone, no cross-entropy on the labels: the labelled images train like the pool's (descriptor + KL to
    # the teacher's probabilities, right on 98 % of them). The students fit their labels (train 0.998) and the
    # teacher's descriptors only to a cosine of 0.72; this asks whether the labels' pull is what stops them
    "w5-rk4x4-nolabel": dict(W5_RK4X4, seed=0, label_weight=0.0),
    "w5-rk4x4-nolabel-s1": dict(W5_RK4X4, seed=1, label_weight=0.0),
    # the shipped recipe, each view of the student's augmentation distilled towards the teacher's own descriptor of
    # that view instead of the unaugmented picture's, which an 8-px shift moves to a cosine of 0.72. The bank is
    # computed on the pack's own chips (JPEG re-encoded: other pixels than the aligned copy's), after packing:
    #   edgenode teacher-views carry/pins64a --manifest carry/pins64a/manifest.json --unlabeled \
    #       --near-duplicates carry/pins64a/near_duplicates.tsv --views 4 --out carry/pins64a/teacher-views.npz
    "w5-rk4x4-views": dict(W5_RK4X4, seed=0, teacher_views="{pack}/teacher-views.npz"),
    "w5-rk4x4-views-s1": dict(W5_RK4X4, seed=1, teacher_views="{pack}/teacher-views.npz"),
    # the final recipe's other two seeds (kd-pool-w5 is seed 0)
    "kd-pool-w5-s1": dict(W5, seed=1),
    "kd-pool-w5-s2": dict(W5, seed=2),
}
ABLATION = "ce,kd,kd-pool-s0,kd-pool-s1,kd-pool-s2,kd-pool-w5"  # what RESULTS.md's table ran
# The training step queues its work without waiting for the GPU (edgenode.transfer); "warn" names, once each in
# train.log, any place that still makes the CPU wait (evaluation and checkpoints do, once an epoch).
WORKER = (
    "import json, sys, torch\n"
    "torch.backends.cudnn.benchmark = True\n"
    "torch.cuda.is_available() and torch.cuda.set_sync_debug_mode('warn')\n"
    "from edgenode.train import TrainConfig, train\n"
    "train(TrainConfig(**json.load(open(sys.argv[1]))))\n"
)


def config_for(name: str, pack: Path, runs: Path, epochs: int, overrides: dict | None = None) -> dict:
    """The run's TrainConfig fields: common settings, then the recipe, then ``overrides`` (--set), winning over both."""
    values = {**COMMON, **RECIPES[name], **(overrides or {}), "data": str(pack),
              "manifest": str(pack / "manifest.json"), "out": str(runs / name), "epochs": epochs}
    return {k: v.format(pack=pack) if isinstance(v, str) else v for k, v in values.items()}


def images_per_epoch(config: dict) -> int:
    """Training images one epoch sees (warms the pixel cache as a side effect)."""
    from edgenode import data as edata
    from edgenode.distributed import DistContext
    from edgenode.train import TrainConfig, unlabeled_pool

    cfg = TrainConfig(**config)
    manifest = edata.Manifest.load(cfg.manifest)
    for split in ("train", "val", "test"):
        edata.load_split_arrays(manifest, cfg.data, split)
    n = len(manifest.files("train"))
    if cfg.unlabeled:
        n += len(unlabeled_pool(cfg, manifest, DistContext())[1])
    return n


def seconds_per_image(config: dict, steps: int = 12) -> float:
    """Wall time of one training image for this recipe's model at its batch size (bf16 autocast, like the runs).

    NCHW, as training runs: channels_last, timed by this job's earlier probe (autotuned, on an H100), was 17-25 %
    slower for these GroupNorm networks (RESULTS.md, "Width 160 and colour jitter on the GPU")."""
    from edgenode.model import build_model
    from edgenode.train import TrainConfig

    cfg = TrainConfig(**config)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of this script
    model = build_model(cfg.model_config(105)).to(device).train()
    x = torch.randn(cfg.batch_size, 3, 64, 64, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.randint(0, 105, (cfg.batch_size,), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for i in range(steps + 3):
        if i == 3:
            sync()
            start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            features, logits = model(x, return_features=True)
            loss = torch.nn.functional.cross_entropy(logits.float(), y) + features.float().square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync()
    return (time.perf_counter() - start) / (steps * cfg.batch_size)


def slim_and_pack(run_dir: Path, target: Path) -> None:
    from edgenode.checkpoint import load_checkpoint, save_checkpoint

    best = run_dir / "best.pt"
    if best.exists():
        ckpt = load_checkpoint(best)
        save_checkpoint(run_dir / "best-slim.pt", replace(ckpt, optimizer=None, scheduler=None))  # best.pt holds no average
    with tarfile.open(target, "w:gz") as tar:
        for name in ("best-slim.pt", "best-ema.pt", "metrics.csv", "metrics.json", "results.json", "curves.png", "train.log", "config.json", "manifest.json"):
            if (run_dir / name).exists():
                tar.add(run_dir / name, arcname=f"{run_dir.name}/{name}")


def pack_folder(pack_tgz: Path, work: Path) -> Path:
    """Where the pack's one top-level folder is extracted under ``work``."""
    with tarfile.open(pack_tgz) as tar:
        tops = {member.name.split("/", 1)[0] for member in tar.getmembers()}
    if len(tops) != 1:
        sys.exit(f"{pack_tgz}: expected one top-level folder (pack_pins.py's output), found {sorted(tops)}")
    return work / tops.pop()


def clean(pack: Path, runs: Path) -> None:
    """Remove what the job put under --work (the pack and the runs), and nothing else there."""
    for folder in (pack, runs):
        shutil.rmtree(folder, ignore_errors=True)


def finished(run_dir: Path, epochs: int) -> bool:
    from edgenode.checkpoint import load_checkpoint

    return (run_dir / "last.pt").is_file() and load_checkpoint(run_dir / "last.pt").epoch >= epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pack", type=Path, help="pins64.tgz from examples/gpu/pack_pins.py")
    parser.add_argument("out", type=Path)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for training, all runs together")
    parser.add_argument("--runs", default=ABLATION, help=f"comma-separated, from: {', '.join(RECIPES)}")
    parser.add_argument("--max-epochs", type=int, default=120)
    parser.add_argument("--epochs", type=int, help="a fixed schedule instead of the epochs that fit the budget: "
                        "each run trains until it ends or the budget does, and a run cut short stays on this "
                        "machine for --resume")
    parser.add_argument("--resume", action="store_true", help="continue the runs an earlier call on this still-warm "
                        "machine left paused (same --runs and --epochs)")
    parser.add_argument("--work", type=Path, default=Path("runs") / "gpu-work",
                        help="where the pack, the runs and the image cache live; the same path in every call, since a "
                             "resumed run must name the same teacher file. By default a git-ignored folder of the "
                             "checkout: the device keeps those between the calls of a warm machine (its README), "
                             "and promises nothing of /tmp")
    parser.add_argument("--probe-steps", type=int, default=12)
    parser.add_argument("--overhead", type=float, default=1.4,
                        help="wall time per epoch over the probe's estimate (evaluation, start-up, sharing the GPU, "
                             "augmentation and distillation, which the probe leaves out); the H100 runs measured "
                             "1.26-1.48 (1.48: width 160 with colour jitter)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a TrainConfig field of every run, e.g. --set width=16 (CPU dry runs)")
    args = parser.parse_args()
    if args.overhead <= 0:
        parser.error(f"--overhead {args.overhead}: must be > 0 (the H100 runs measured 1.26 to 1.48)")
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: must be at least 1")
    if args.resume and not args.epochs:
        parser.error("--resume continues a fixed schedule: pass the --epochs the runs started with")
    unknown = [name for name in args.runs.split(",") if name not in RECIPES]
    if unknown:
        parser.error(f"--runs: no recipe {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    for name in args.runs.split(","):
        if RECIPES[name].get("epochs", args.epochs) != args.epochs:
            parser.error(f"--runs {name} is a {RECIPES[name]['epochs']}-epoch schedule: pass --epochs {RECIPES[name]['epochs']}")
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    t0 = STARTED
    os.environ.setdefault("EDGENODE_CACHE", str((args.work / "cache").resolve()))
    names = args.runs.split(",")
    pack, runs = pack_folder(args.pack, args.work), args.work / "runs"  # pins64 (plain crops) or pins64a (aligned chips)
    if args.resume:  # before any set-up: a machine given back since the last call holds nothing to continue
        for name in names:
            if not (runs / name / "last.pt").is_file():
                sys.exit(f"--resume: no paused {name} in {args.work}: the machine was given back since the last call "
                         "(it keeps a run for 30 s idle), so the run starts over: drop --resume")
    else:  # a run left by an earlier call on a still-warm machine would refuse to start
        clean(pack, runs)
    if not (pack / "manifest.json").is_file():
        with tarfile.open(args.pack) as tar:
            tar.extractall(args.work, filter="data")
    args.out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (dry run)"
    info = {"device": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "pack": pack.name,
            "aligned": (pack / "alignment.json").is_file(), "runs": {}}
    print(f"[{time.time() - t0:.0f}s] {info['device']}, torch {torch.__version__}", flush=True)

    per_epoch = {}
    for name in names:
        config = config_for(name, pack, runs, args.epochs or args.max_epochs, overrides)  # the size of an epoch
        n = images_per_epoch(config)
        info["runs"][name] = {"images_per_epoch": n}
        if args.epochs:  # no probe: the schedule is given, and each epoch's time is in metrics.csv
            continue
        per_epoch[name] = n * seconds_per_image(config, args.probe_steps)
        info["runs"][name]["estimated_seconds_per_epoch_alone"] = per_epoch[name]
        print(f"[{time.time() - t0:.0f}s] {name}: {n} images/epoch, ~{per_epoch[name]:.2f} s/epoch alone", flush=True)
    remaining = args.budget - (time.time() - t0)
    if args.epochs:
        epochs = args.epochs
    else:
        # runs share the GPU: assume no overlap gain, plus --overhead for evaluation, start-up and Python
        # (1.25 and 1.2 left runs short of their schedule on an H100, and the calls measured 1.26-1.48; a run cut
        # short keeps its best.pt)
        epochs = max(1, min(args.max_epochs, int(remaining / (args.overhead * sum(per_epoch.values())))))
    info["epochs"] = epochs
    print(f"[{time.time() - t0:.0f}s] {remaining:.0f}s left: {epochs} epochs for each of {len(names)} runs", flush=True)

    processes = {}
    for name in names:
        config = config_for(name, pack, runs, epochs, overrides)
        run_dir = Path(config["out"])
        if args.resume:
            config["resume"] = True
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config, indent=1))
        log = open(run_dir / "train.log", "a" if args.resume else "w")
        env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
        processes[name] = (subprocess.Popen([sys.executable, "-c", WORKER, str(run_dir / "config.json")], stdout=log, stderr=subprocess.STDOUT, env=env), time.time())
    deadline, ended = t0 + args.budget, {}
    while len(ended) < len(processes) and time.time() < deadline:
        ended.update({name: time.time() for name, (p, _) in processes.items() if name not in ended and p.poll() is not None})
        time.sleep(0.5)
    for name, (p, started) in processes.items():
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:  # never lose the packing (and every finished run) to one stuck worker
                p.kill()
                p.wait()
            info["runs"][name]["stopped_at_deadline"] = True
        info["runs"][name].update(returncode=p.returncode, wall_seconds=ended.get(name, time.time()) - started)
        print(f"[{time.time() - t0:.0f}s] {name}: rc {p.returncode}", flush=True)
    # paused: cut by the deadline (or by --set stop_after) mid-schedule; a run that failed would only fail again
    paused = [name for name in names if args.epochs and (runs / name / "last.pt").is_file() and not finished(runs / name, epochs)
              and (info["runs"][name].get("stopped_at_deadline") or info["runs"][name]["returncode"] == 0)]
    for name in names:
        slim_and_pack(runs / name, args.out / f"{name}.tgz")
        if name in paused:
            print(f"[{time.time() - t0:.0f}s] {name}: paused; the next call, at once, continues it with --resume", flush=True)
    info["paused"] = paused
    if not paused:  # the pack and full checkpoints: a warm machine's next call starts clean
        clean(pack, runs)
    info["total_seconds"] = time.time() - t0
    (args.out / "gpu_runs.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1), flush=True)


if __name__ == "__main__":
    main()
