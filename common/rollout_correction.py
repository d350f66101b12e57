"""PLACEHOLDER (replaced by the rollout-correction branch): token-TIS only."""

import torch


def check_args(args) -> None:
    if args.rollout_is not in ("none", "token-tis") or args.rollout_rs != "none":
        raise SystemExit("error: not yet")


def rollout_correction(old_logprobs, behavior_logprobs, mask, advantages, args):
    if args.rollout_is == "none" and args.rollout_rs == "none":
        return torch.ones_like(mask), {}
    w = torch.exp(old_logprobs - behavior_logprobs).clamp(max=args.rollout_is_threshold).detach()
    return w * mask, {}
