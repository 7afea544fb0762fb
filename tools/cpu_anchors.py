"""PyTorch anchors on the CPU at the shapes of `bench train`: plain PyTorch (full, BiTFiT),
Opacus ghost clipping (full), fastDP book-keeping MixOpt (full) and fastDP BiTFiT.

Run it through `tools/cpu-anchors.sh`, which builds the virtual environment. Every (model, mode)
runs in its own process (this script with `--single`), so each line's `peak_rss_gib` is that
configuration's own. One JSON line per configuration on stdout, `"bench": "anchor"`, which
`bench ratios` pairs with `bench train` lines of the same model, batch and shape.

The models match burn-dp-models' (`bench train`): GPT-2 small with an untied head (what fastDP's
examples and Opacus ghost clipping need) and AdamW; ViT-B/16 with 1000 classes and AdamW;
ResNet-50 with GroupNorm (32 groups), 1000 classes and SGD. Random weights and data, dropout off.
DP modes: automatic clipping (fastDP; Bu et al. 2023) or Abadi clipping (Opacus ghost), σ = 1.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODES = ["plain-full", "plain-bitfit", "opacus-ghost-full", "fastdp-mixopt-full", "fastdp-bitfit"]
MODELS = ["gpt2-small", "vit-b16", "resnet50-gn"]


def gpt2_small():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, tie_word_embeddings=False)
    return GPT2LMHeadModel(cfg)


def to_linear(model):
    """HF GPT-2's Conv1D is a Linear with a transposed weight; Opacus's ghost clipping knows
    nn.Linear only."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, Conv1D):
                lin = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                lin.weight.data = child.weight.data.t().contiguous()
                lin.bias.data = child.bias.data
                setattr(mod, name, lin)
    return model


def vit_b16(image):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=image, patch_size=16, num_labels=1000, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    return ViTForImageClassification(cfg)


def resnet50_gn():
    """ResNet-50 (He et al. 2016, bottleneck v1.5: stride on the 3×3) with GroupNorm(32) in place
    of every BatchNorm, as burn-dp-models' `ResNetConfig::resnet50(1000).with_norm(GroupNorm)`."""
    import torch.nn as nn

    def gn(c):
        return nn.GroupNorm(32, c)

    class Bottleneck(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = 4 * width
            self.conv1, self.n1 = nn.Conv2d(cin, width, 1, bias=False), gn(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.n2 = gn(width)
            self.conv3, self.n3 = nn.Conv2d(width, cout, 1, bias=False), gn(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), gn(cout))
            self.relu = nn.ReLU()  # not in place: Opacus's hooks reject in-place ops

        def forward(self, x):
            y = self.relu(self.n1(self.conv1(x)))
            y = self.relu(self.n2(self.conv2(y)))
            y = self.n3(self.conv3(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), gn(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 1000)]
    return nn.Sequential(*layers)


def build(model_name, args):
    """The model, its inputs, the optimizer class and lr, and the per-sample loss function."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    if model_name == "gpt2-small":
        model = gpt2_small()
        ids = torch.randint(0, 50257, (args.batch, args.seq))
        pos = torch.arange(args.seq).unsqueeze(0).repeat(args.batch, 1)  # [B, T]: hooks need B

        def per_sample(m):
            logits = m(input_ids=ids, position_ids=pos).logits
            ce = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            return ce.mean(dim=1)

        return model, per_sample, torch.optim.AdamW, 1e-4, (ids,)
    x = torch.randn(args.batch, 3, args.image, args.image)
    y = torch.randint(0, 1000, (args.batch,))
    if model_name == "vit-b16":
        model = vit_b16(args.image)

        def per_sample(m):
            return F.cross_entropy(m(pixel_values=x).logits, y, reduction="none")

        return model, per_sample, torch.optim.AdamW, 1e-4, (x, y)
    model = resnet50_gn()

    def per_sample(m):
        return F.cross_entropy(m(x), y, reduction="none")

    return model, per_sample, torch.optim.SGD, 0.1, (x, y)


def run_single(model_name, mode, args):
    import torch

    torch.set_num_threads(args.threads)
    model, per_sample, opt_cls, lr, data = build(model_name, args)
    if mode.startswith("opacus") and model_name == "gpt2-small":
        model = to_linear(model)
    if "bitfit" in mode:
        for name, p in model.named_parameters():
            p.requires_grad_(name.endswith(".bias") or name == "bias")
    model.train()
    opt = opt_cls([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_of = lambda m: per_sample(m).mean()  # noqa: E731
    if mode.startswith("opacus"):
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        class PerSampleLoss(torch.nn.Module):
            """Opacus's ghost criterion: it sets `reduction` to "none" for the first pass."""

            def __init__(self):
                super().__init__()
                self.reduction = "mean"

            def forward(self, losses, _target):
                return losses if self.reduction == "none" else losses.mean()

        loader = DataLoader(TensorDataset(*data), batch_size=args.batch)
        model, opt, crit, _ = PrivacyEngine().make_private(
            module=model, optimizer=opt, data_loader=loader, criterion=PerSampleLoss(),
            noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode="ghost",
            poisson_sampling=False)

        def step():
            opt.zero_grad(set_to_none=True)
            crit(per_sample(model), None).backward()
            opt.step()
    else:
        if mode.startswith("fastdp"):
            import fastDP

            if model_name == "gpt2-small":
                # fastDP swaps GPT-2's forward for one written before transformers 5; the
                # explicit [B, T] positions above make the swap unnecessary.
                import fastDP.transformers_support as support

                support.forward_swapper = lambda module: None
            fastDP.PrivacyEngine(model, batch_size=args.batch, sample_size=50_000, epochs=3,
                                 noise_multiplier=1.0, clipping_fn="automatic",
                                 clipping_mode="MixOpt", clipping_style="all-layer").attach(opt)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_of(model).backward()
            opt.step()

    started = time.perf_counter()
    step()
    first_step = time.perf_counter() - started
    for _ in range(max(args.warmup - 1, 0)):
        step()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = (time.perf_counter() - started) / args.steps
    return {"samples_per_s": args.batch / seconds, "step_ms": seconds * 1e3,
            "first_step_s": first_step,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def versions():
    out = {}
    for name in ["torch", "opacus", "transformers"]:
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    try:
        import fastDP  # noqa: F401

        out["fastdp"] = os.environ.get("FASTDP_SRC", "importable")
    except ImportError:
        out["fastdp"] = None
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="gpt2-small", help=f"comma-separated: {','.join(MODELS)}")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=32, help="GPT-2 sequence length")
    p.add_argument("--image", type=int, default=32, help="image side of ViT and ResNet")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--single", help=argparse.SUPPRESS)  # MODEL:MODE, in this process
    args = p.parse_args()
    if args.single:
        model_name, mode = args.single.split(":")
        print(json.dumps(run_single(model_name, mode, args)), flush=True)
        return
    info = versions()
    for model_name in args.models.split(","):
        if model_name not in MODELS:
            sys.exit(f"unknown model {model_name!r} (one of {', '.join(MODELS)})")
        for mode in args.modes.split(","):
            if mode not in MODES:
                sys.exit(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
            line = {"bench": "anchor", "impl": "pytorch", "model": model_name, "mode": mode,
                    "batch": args.batch, "seq": args.seq, "image": args.image,
                    "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
                    "load_avg_1m": os.getloadavg()[0], **info}
            if mode.startswith("fastdp") and info["fastdp"] is None:
                line["error"] = "fastDP is not importable (set FASTDP_SRC to its source folder)"
            else:
                print(f"cpu-anchors: {model_name} {mode}", file=sys.stderr, flush=True)
                argv = [a for a in sys.argv[1:]]
                child = subprocess.run([sys.executable, __file__, *argv, "--single",
                                        f"{model_name}:{mode}"], capture_output=True, text=True)
                try:
                    line.update(json.loads(child.stdout.strip().splitlines()[-1]))
                except (IndexError, json.JSONDecodeError):
                    tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
                    line["error"] = f"exit {child.returncode}: {tail[:300]}"
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
