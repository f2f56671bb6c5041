"""Where a trained model expects a ball that went behind the occluder: at the frames it is due out, how far its
prior-mean prediction sits between "the ball comes out" and "nothing comes out". Prints JSON.

    python bench/hidden_ball_expectation.py --checkpoint runs/x [--pairs 128]

The permanence pairs behind the occluder (`vanish_occluder`: the possible clip shows the ball coming out, the
impossible one the same scene without it) are identical up to the violation frame t, where only a faint rim
differs. For frames t, t+1, t+2 the prediction is made from each clip's own `context` frames before it with z =
the prior's mean. Reported per frame (distances are the model's per-dimension squared distance): the prediction's
distance to each clip's own frame, the distance between the two frames, and the prediction's projection on the
segment from "nothing" (0) to "the ball comes out" (1) (law of cosines on the three distances): made from the
empty clip's past (`share_towards_ball`; at t that past is both clips') and from the past of the clip where the
ball comes out (`..._from_its_own_past`: after t it has seen the rim). A predictor that carries the hidden ball
puts the second near 1 at t+1; one that does not leaves a ball that comes out more surprising than one that fails
to (the `vanish_occluder` accuracy in `surprise.json`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="run, model or checkpoint directory")
    parser.add_argument("--pairs", type=int, default=128, help="permanence pairs drawn (a quarter are vanish_occluder)")
    parser.add_argument("--seed", type=int, default=40_000, help="the surprise suite's seed: the same scenes")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    import numpy as np
    import torch

    from analysis import inference
    from analysis.loading import load_model, simulator_config
    from envs.voe import generate_pairs, voe_config_for
    from worldmodel.model import distance

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model, model_dir = load_model(args.checkpoint)
    model.eval()
    balls = simulator_config(model_dir, model.config.image_size)
    context = model.config.context_frames
    pairs = generate_pairs(balls, "permanence", args.pairs, seed=args.seed, voe=voe_config_for(context))
    rows = np.flatnonzero(pairs.variant == "vanish_occluder")
    if rows.size == 0:
        parser.error(f"no vanish_occluder pairs among {args.pairs}; draw more with --pairs")
    clips = {"comes_out": pairs.possible[rows], "nothing": pairs.impossible[rows]}
    with torch.no_grad():
        online = {name: inference.encode(model, frames) for name, frames in clips.items()}
        target = {name: inference.encode(model, frames, target=True) for name, frames in clips.items()}
        index = torch.arange(len(rows))

        def predict(name: str, frame: torch.Tensor) -> torch.Tensor:
            """(P,) frame indices -> (P, D) prior-mean prediction of each from its clip's own past."""
            past = torch.stack([online[name][i, t - context : t] for i, t in zip(index, frame)])  # (P, C, D)
            last = target[name][index, frame - 1]  # (P, D)
            return model.rollout(past, last, 1, deterministic=True)[0][:, 0]

        result = {}
        violation = torch.as_tensor(pairs.violation_frame[rows])
        for ahead in (0, 1, 2):
            frame = violation + ahead
            if int(frame.max()) >= pairs.possible.shape[1]:
                continue
            out_frame, none_frame = target["comes_out"][index, frame], target["nothing"][index, frame]
            gap = distance(out_frame, none_frame)  # (P,)

            def share(prediction: torch.Tensor) -> float:
                """Projection of the prediction on the segment nothing (0) -> the ball comes out (1), from the three
                squared distances (law of cosines), averaged over pairs."""
                to_out, to_none = distance(prediction, out_frame), distance(prediction, none_frame)
                return float(((to_none - to_out + gap) / (2 * gap.clamp_min(1e-12))).mean())

            from_out, from_none = predict("comes_out", frame), predict("nothing", frame)
            own_out, own_none = distance(from_out, out_frame), distance(from_none, none_frame)  # (P,) each
            result[f"t+{ahead}"] = {
                "error_comes_out_own_past": float(own_out.mean()),
                "error_nothing_own_past": float(own_none.mean()),
                "comes_out_vs_nothing": float(gap.mean()),
                "prediction_to_comes_out": float(distance(from_none, out_frame).mean()),
                "prediction_to_nothing": float(own_none.mean()),
                # Before t the pasts are identical, so at t the two predictions are one.
                "share_towards_ball": share(from_none),
                "share_towards_ball_from_its_own_past": share(from_out),
                "nothing_more_surprising": float((own_none > own_out).float().mean()),
            }
    print(json.dumps({"checkpoint": str(model_dir), "pairs": int(rows.size), "context": context, "frames": result},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
