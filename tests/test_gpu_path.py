"""The GPU code path, checked for correctness on CPU: the torch renderer draws exactly what the numpy renderer
draws, device-rendered batches equal the cached frames, channels-last frames, bf16 autocast steps, the compile and
render flags, and the non-finite guard acting before the optimizer step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from envs.physics import BallsConfig, BallsSim
from envs.torch_render import TorchRenderer, to_bthw
from training.config import debug
from training.config_io import apply_overrides
from training.data import LoaderBatches, RenderedBatches, ResumableBatchSampler, build_datasets, train_stream
from training.distributed import DistContext
from training.trainer import build_setup, resolve_flag, resolve_precision, train_step

CPU = torch.device("cpu")


def debug_config(tmp_path: Path, *overrides: str):
    return apply_overrides(debug(), [
        f"run.out_dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path / 'cache'}", "run.progress=false",
        "run.tracking=none", "run.threads=1", "data.num_clips=12", "data.batch_size=4", *overrides,
    ])


@pytest.mark.parametrize(
    "balls",
    [
        BallsConfig(image_size=32, max_balls=2),
        BallsConfig(image_size=64, min_balls=3, max_balls=3, gravity=0.002, occluder=True, background=(10, 20, 30)),
    ],
    ids=["2balls32", "3balls64-occluder"],
)
def test_torch_renderer_is_bitwise_the_numpy_renderer(balls):
    sim = BallsSim(balls, np.random.default_rng(7))
    state = {"positions": [], "radii": [], "colors": [], "present": []}
    expected = []
    for _ in range(150):  # long enough for wall bounces, collisions, kicks and (in the 2nd scene) occlusion
        sim.step()
        simulation = sim._batch  # the float64 state the numpy renderer draws from
        for key in state:
            state[key].append(getattr(simulation, key)[0].copy())
        expected.append(sim.render().copy())
    tensors = {key: torch.from_numpy(np.stack(values)) for key, values in state.items()}
    frames = TorchRenderer(balls).render(tensors["positions"], tensors["radii"], tensors["colors"], tensors["present"])
    expected = np.stack(expected)
    assert frames.dtype == torch.uint8 and frames.shape == expected.shape
    # Bitwise on most CPUs; where torch's vectorised sqrt rounds one rim pixel's coverage differently from numpy's
    # (seen: 1 byte in 1.8 million, off by 1) the frames may differ that much and no more.
    difference = np.abs(frames.numpy().astype(np.int16) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-5
    # The frames are not trivially equal (e.g. both blank): balls cover a real share of the pixels.
    assert (expected != np.asarray(balls.background, dtype=np.uint8)).any(-1).mean() > 0.02


def test_torch_renderer_draws_walls_and_clip_occluders_like_the_numpy_renderer():
    from envs.clips import generate_clips

    balls = BallsConfig(image_size=32, max_balls=2, wall_prob=0.7, occluder_prob=0.7, occluder_width=0.3)
    clips = generate_clips(balls, 6, 10, seed=3)
    tensors = {key: torch.from_numpy(np.asarray(clips.state[key])) for key in
               ("positions", "radii", "colors", "present", "wall", "occluder")}
    frames = TorchRenderer(balls).render(tensors["positions"], tensors["radii"], tensors["colors"],
                                         tensors["present"], wall=tensors["wall"], occluder=tensors["occluder"])
    # From the float32 stored state a few rim pixels may differ by 1 (see envs/torch_render.py); walls and
    # occluders are whole columns and must match exactly.
    difference = np.abs(frames.numpy().astype(np.int16) - clips.frames)
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01
    assert (clips.state["wall"][:, 0, 1] > 0).any() and (clips.state["occluder"][:, 0, 1] > 0).any()


def test_renderer_rejects_mismatched_shapes():
    renderer = TorchRenderer(BallsConfig(image_size=32, max_balls=2))
    with pytest.raises(ValueError, match="positions must be"):
        renderer.render(torch.zeros(4, 2, 3), torch.zeros(4, 2), torch.zeros(4, 2, 3, dtype=torch.uint8),
                        torch.ones(4, 2, dtype=torch.bool))


def test_device_rendered_batches_equal_the_cached_frames_in_channels_last_memory(tmp_path):
    config = debug_config(tmp_path)
    datasets = build_datasets(config)
    rendered = train_stream(datasets.train, config, start=3, device=CPU, render_on_device=True)
    loaded = train_stream(datasets.train, config, start=3, device=CPU, render_on_device=False)
    assert isinstance(rendered, RenderedBatches) and isinstance(loaded, LoaderBatches)
    for _ in range(4):  # crosses an epoch boundary of the 12-clip set as well
        a, b = next(rendered)["frames"], next(loaded)["frames"]
        assert a.shape == b.shape == (4, config.window, 3, 32, 32) and a.dtype == b.dtype == torch.uint8
        assert torch.equal(a, b)
        flat = a.flatten(0, 1)  # what the encoder convolves: (B*T, 3, H, W)
        assert flat.is_contiguous(memory_format=torch.channels_last)
    assert to_bthw(torch.zeros(2, 3, 8, 8, 3)).shape == (2, 3, 3, 8, 8)


def test_render_on_device_needs_ball_state(tmp_path):
    config = debug_config(tmp_path)
    datasets = build_datasets(config)
    frames_only = torch.utils.data.TensorDataset(torch.zeros(40, 6, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="render_on_device=true needs data.source=bouncing_balls"):
        train_stream(frames_only, config, start=0, device=CPU, render_on_device=True)
    assert len(next(train_stream(datasets.train, config, start=0, device=CPU))["frames"]) == 4


def test_flags_resolve_per_device():
    cuda = torch.device("cuda", 0)
    assert resolve_flag("auto", cuda) and not resolve_flag("auto", CPU)
    assert resolve_flag(True, CPU) and not resolve_flag(False, cuda)
    assert resolve_precision(cuda, "auto") == "bf16" and resolve_precision(CPU, "auto") == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        resolve_precision(CPU, "fp16")
    config = debug()
    assert config.run.compile == "auto" and config.run.render_on_device == "auto"
    with pytest.raises(ValueError, match="run.collapse_min_rank"):
        apply_overrides(debug(), ["run.collapse_min_rank=2"])


@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")  # torch.compile's own imports
def test_compile_flag_compiles_the_step_module_lazily(tmp_path):
    config = debug_config(tmp_path, "run.compile=true", "run.compile_mode=max-autotune-no-cudagraphs")
    setup = build_setup(config, DistContext(), CPU)
    # nn.Module.compile installs the compiled call without tracing yet (that happens on the first step).
    assert setup.compiled and setup.module._compiled_call_impl is not None
    eager = build_setup(debug_config(tmp_path), DistContext(), CPU)
    assert not eager.compiled and eager.module._compiled_call_impl is None


def test_bf16_autocast_step_on_cpu_trains(tmp_path):
    config = debug_config(tmp_path, "run.precision=bf16")
    datasets = build_datasets(config)
    torch.manual_seed(0)
    setup = build_setup(config, DistContext(), CPU)
    assert setup.precision == "bf16"
    batches = train_stream(datasets.train, config, start=0, device=CPU)
    before = [p.detach().clone() for p in setup.parameters]
    target_before = [p.detach().clone() for p in setup.model.target_encoder.parameters()]
    out = train_step(setup, next(batches), telemetry=True)
    assert not out.nonfinite and torch.isfinite(out.loss) and out.metrics["loss/total"] > 0
    assert all(p.dtype == torch.float32 for p in setup.parameters)  # autocast keeps fp32 master weights
    assert sum(not torch.equal(a, b) for a, b in zip(before, setup.parameters)) > 0.9 * len(before)
    # The EMA target moved towards the updated online encoder.
    assert any(not torch.equal(a, b) for a, b in zip(target_before, setup.model.target_encoder.parameters()))


@pytest.mark.parametrize("fault", ["nan-loss", "inf-grad"])
def test_nonfinite_is_caught_before_the_optimizer_step(tmp_path, fault):
    config = debug_config(tmp_path)
    datasets = build_datasets(config)
    setup = build_setup(config, DistContext(), CPU)
    batches = train_stream(datasets.train, config, start=0, device=CPU)
    train_step(setup, next(batches), telemetry=False)  # one good step, so AdamW has state to protect
    weights = {name: value.clone() for name, value in setup.model.state_dict().items()}
    optimizer_steps = [float(state["step"]) for state in setup.optimizer.state.values()]
    if fault == "inf-grad":
        handle = setup.model.decoder.deconvs[0].weight.register_hook(lambda grad: grad * float("inf"))
    out = train_step(setup, next(batches), telemetry=False, poison=fault == "nan-loss")
    if fault == "inf-grad":
        handle.remove()
    assert out.nonfinite
    assert not torch.isfinite(out.grad_norm if fault == "inf-grad" else out.loss)
    # Neither the weights, nor the EMA target, nor AdamW's moments or step counts saw the bad step.
    assert all(torch.equal(weights[name], value) for name, value in setup.model.state_dict().items())
    assert [float(state["step"]) for state in setup.optimizer.state.values()] == optimizer_steps
    assert all(p.grad is None for p in setup.parameters)
    # The next good step proceeds normally.
    assert not train_step(setup, next(batches), telemetry=False).nonfinite


def test_sampler_is_a_distributed_sampler_with_epochs():
    """DistributedSampler + set_epoch semantics: per epoch a fresh permutation, ranks disjoint and covering it."""
    size, batch, world = 40, 4, 2
    per_rank = [ResumableBatchSampler(size, batch, seed=5, rank=r, world_size=world) for r in range(world)]
    epochs = {}
    for rank, sampler in enumerate(per_rank):
        for index, indices in zip(range(10), sampler):  # 2 epochs of 5 global batches
            epochs.setdefault(index // 5, []).append(indices)
    for epoch, chunks in epochs.items():
        flat = sum(chunks, [])
        assert sorted(flat) == list(range(size)), epoch  # each epoch: every sample once, over both ranks
    assert sum(epochs[0], []) != sum(epochs[1], [])  # and a new order the next epoch


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.*")
def test_compiled_step_matches_eager_bit_for_bit(tmp_path, monkeypatch):
    """The run.compile path (dynamo graph capture + AOTAutograd of forward and backward, telemetry steps falling
    back to eager) computes exactly the eager step. Inductor's code generation is swapped for `aot_eager` here: it
    takes minutes on 2 CPU cores (checked by hand: 240 s to compile, then 0.07 s/step), the graphs are the same."""
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: compile_module(self, backend="aot_eager"))
    runs = {}
    for compiled in (False, True):
        config = debug_config(tmp_path, f"run.compile={str(compiled).lower()}")
        datasets = build_datasets(config)
        torch.manual_seed(0)
        setup = build_setup(config, DistContext(), CPU)
        assert setup.compiled == compiled
        batches = train_stream(datasets.train, config, start=0, device=CPU)
        step_losses = [float(train_step(setup, next(batches), telemetry=step == 2).loss) for step in range(4)]
        runs[compiled] = step_losses, setup.model.state_dict()
    assert runs[True][0] == runs[False][0] and runs[True][0][-1] < runs[True][0][0]
    eager, compiled = runs[False][1], runs[True][1]
    assert all(torch.equal(eager[name], compiled[name]) for name in eager)
