"""Tests of the bouncing-balls video source: physics laws, rendering, reproducibility, cache, gym env, dataset."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import envs
from envs import clips as clips_module
from envs.clips import ClipSet, cache_paths, clip_rng, generate_clips, load_or_generate
from envs.dataset import WindowDataset, split_clips
from envs.physics import BallsConfig, BallsSim

REPO = Path(__file__).resolve().parents[1]


def kinetic_energy(state: dict[str, np.ndarray]) -> float:
    v2 = (state["velocities"] ** 2).sum(-1)
    return float((0.5 * state["masses"] * v2)[state["present"]].sum())


def momentum(state: dict[str, np.ndarray]) -> np.ndarray:
    return (state["masses"][:, None] * state["velocities"])[state["present"]].sum(0)


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image_size": 4}, "image_size"),
        ({"min_balls": 0}, "min_balls"),
        ({"min_balls": 3, "max_balls": 2}, "max_balls"),
        ({"max_balls": True}, "max_balls"),
        ({"radius_range": (0.2, 0.1)}, "radius_range"),
        ({"radius_range": (0.0, 0.1)}, "radius_range"),
        ({"speed_range": (-0.1, 0.02)}, "speed_range"),
        ({"kick_prob": 1.5}, "kick_prob"),
        ({"kick_strength": -1.0}, "kick_strength"),
        ({"occluder_width": 0.0}, "occluder_width"),
        ({"occluder_x": 2.0}, "occluder_x"),
        ({"gravity": float("nan")}, "gravity"),
        ({"background": (0, 0, 300)}, "background"),
        ({"palette": ((255, 0, 0), (255, 0, 0), (0, 0, 255))}, "palette"),
        ({"max_balls": 9}, "palette"),
        ({"max_speed": 0.01}, "max_speed"),
        ({"max_balls": 8, "radius_range": (0.1, 0.2)}, "max_balls"),
    ],
)
def test_config_validation_names_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        BallsConfig(**overrides)


def test_config_validate_catches_mutation_and_lists_are_normalised() -> None:
    config = BallsConfig(radius_range=[0.05, 0.1])  # type: ignore[arg-type]
    assert config.radius_range == (0.05, 0.1)
    config.kick_prob = -0.5
    with pytest.raises(ValueError, match="kick_prob"):
        BallsSim(config, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------- physics


def test_energy_conserved_without_kicks_or_gravity() -> None:
    config = BallsConfig(min_balls=3, max_balls=3, kick_prob=0.0, gravity=0.0, speed_range=(0.04, 0.05))
    touched = 0
    for seed in range(3):
        sim = BallsSim(config, np.random.default_rng(seed))
        e0 = kinetic_energy(sim.state())
        for _ in range(200):
            state = sim.step()
            touched += int(state["contacts"].any())
        assert kinetic_energy(state) == pytest.approx(e0, rel=0.01)
    assert touched > 0  # the run must actually have exercised collisions


def test_balls_stay_inside() -> None:
    config = BallsConfig(min_balls=3, max_balls=3, kick_prob=0.3, kick_strength=0.06, gravity=0.004)
    sim = BallsSim(config, np.random.default_rng(1))
    for _ in range(500):
        state = sim.step()
        p, r = state["positions"][state["present"]], state["radii"][state["present"]][:, None]
        assert np.all(p - r >= -1e-9) and np.all(p + r <= 1 + 1e-9)
        assert np.all(np.isfinite(state["velocities"]))


def test_head_on_equal_masses_swap_velocities() -> None:
    sim = BallsSim(BallsConfig(kick_prob=0.0, mass_from_radius=False), np.random.default_rng(0))
    sim.set_balls(positions=[[0.39, 0.5], [0.61, 0.5]], velocities=[[0.02, 0.0], [-0.02, 0.0]], radii=[0.1, 0.1])
    before = sim.state()
    after = sim.step()
    assert after["contacts"][:2].all()
    np.testing.assert_allclose(after["velocities"][:2], before["velocities"][1::-1][:2], atol=1e-12)
    np.testing.assert_allclose(momentum(after), momentum(before), atol=1e-12)
    # Separated: no longer overlapping after the push-apart.
    gap = np.linalg.norm(after["positions"][1] - after["positions"][0]) - 0.2
    assert gap >= -1e-12


def test_oblique_unequal_mass_collision_conserves_momentum_and_energy() -> None:
    sim = BallsSim(BallsConfig(kick_prob=0.0), np.random.default_rng(0))
    sim.set_balls(
        positions=[[0.35, 0.45], [0.58, 0.52]], velocities=[[0.04, 0.01], [-0.01, -0.005]], radii=[0.13, 0.09]
    )
    before = sim.state()
    assert before["masses"][0] > before["masses"][1]  # mass follows radius**2
    after = sim.step()
    assert after["contacts"][:2].all()
    np.testing.assert_allclose(momentum(after), momentum(before), atol=1e-12)
    assert kinetic_energy(after) == pytest.approx(kinetic_energy(before), rel=1e-12)


def test_kicks_happen_at_kick_prob() -> None:
    config = BallsConfig(min_balls=3, max_balls=3, kick_prob=0.2)
    sim = BallsSim(config, np.random.default_rng(2))
    kicked = np.array([sim.step()["kicked"][:3] for _ in range(1000)])
    assert kicked.mean() == pytest.approx(0.2, abs=0.03)
    # Kicks never push a ball past max_speed (one ball, so no collision can speed it up afterwards).
    lone = BallsConfig(min_balls=1, max_balls=1, kick_prob=1.0, kick_strength=0.09)
    sim2 = BallsSim(lone, np.random.default_rng(3))
    for _ in range(50):
        state = sim2.step()
        speeds = np.linalg.norm(state["velocities"][state["kicked"]], axis=-1)
        assert np.all(speeds <= sim2.config.max_speed + 1e-12)


def test_no_kicks_when_kick_prob_zero() -> None:
    sim = BallsSim(BallsConfig(kick_prob=0.0), np.random.default_rng(0))
    assert not any(sim.step()["kicked"].any() for _ in range(200))


def test_state_layout() -> None:
    config = BallsConfig(min_balls=1, max_balls=4)
    state = BallsSim(config, np.random.default_rng(5)).step()
    assert state["positions"].shape == (4, 2) and state["velocities"].shape == (4, 2)
    assert state["colors"].shape == (4, 3) and state["colors"].dtype == np.uint8
    for key in ("radii", "masses"):
        assert state[key].shape == (4,)
    for key in ("contacts", "kicked", "occluded", "present"):
        assert state[key].shape == (4,) and state[key].dtype == bool
    n = int(state["num_balls"])
    assert state["present"].sum() == n and state["present"][:n].all()
    assert np.all(state["radii"][n:] == 0) and np.all(state["masses"][n:] == 0)


# ------------------------------------------------------------------------------------------------- rendering


def test_occluder_hides_ball_and_sets_flag() -> None:
    config = BallsConfig(occluder=True, occluder_x=0.5, occluder_width=0.15, kick_prob=0.0)
    c0, c1 = config.occluder_columns()
    sim = BallsSim(config, np.random.default_rng(0))
    sim.set_balls(positions=[[0.5, 0.5], [0.15, 0.2]], velocities=[[0.0, 0.0], [0.0, 0.0]], radii=[0.12, 0.1])
    state = sim.state()
    assert state["occluded"][0] and not state["occluded"][1]
    frame = sim.render()
    gray = np.array(config.occluder_color, dtype=np.uint8)
    assert np.all(frame[:, c0:c1] == gray)  # the bar is drawn over the ball
    red = np.array(config.palette[0], dtype=np.uint8)
    # The occluded ball still shows on both sides of the bar, and the visible one is drawn at its centre.
    assert np.all(frame[32, c0 - 2] == red) and np.all(frame[32, c1 + 1] == red)
    assert np.all(frame[int(0.2 * 64), int(0.15 * 64)] == np.array(config.palette[1], dtype=np.uint8))
    assert np.all(frame[2, 2] == 0)  # background elsewhere


def test_render_frame_basics() -> None:
    config = BallsConfig(background=(10, 20, 30))
    frame = BallsSim(config, np.random.default_rng(0)).render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    colors = {tuple(c) for c in frame.reshape(-1, 3)}
    assert (10, 20, 30) in colors and len(colors) > 2  # background, ball and anti-aliased edge pixels


# ------------------------------------------------------------------------------------------------- clips


SMALL = BallsConfig(image_size=32, kick_prob=0.2, occluder=True, gravity=0.002)


def test_clips_reproducible_and_seed_dependent() -> None:
    a = generate_clips(SMALL, 6, 12, seed=3)
    b = generate_clips(SMALL, 6, 12, seed=3)
    c = generate_clips(SMALL, 6, 12, seed=4)
    assert a.frames.shape == (6, 12, 32, 32, 3) and a.frames.dtype == np.uint8
    assert np.array_equal(a.frames, b.frames)
    for key in a.state:
        # Per-ball arrays have a ball axis; the clip's furniture (wall faces, occluder columns) is 2 numbers a frame.
        assert a.state[key].shape[:3] == ((6, 12, 2) if key in ("wall", "occluder") else (6, 12, 3))
        assert np.array_equal(a.state[key], b.state[key])
    assert np.array_equal(a.num_balls, b.num_balls)
    assert not np.array_equal(a.frames, c.frames)


def test_clips_prefix_property() -> None:
    ten = generate_clips(SMALL, 10, 8, seed=11)
    twenty = generate_clips(SMALL, 20, 8, seed=11)
    assert np.array_equal(ten.frames, twenty.frames[:10])
    assert np.array_equal(ten.num_balls, twenty.num_balls[:10])
    for key in ten.state:
        assert np.array_equal(ten.state[key], twenty.state[key][:10])


@pytest.mark.parametrize("config", [
    BallsConfig(kick_prob=0.3, gravity=0.003, occluder=True, background=(5, 5, 40)),
    BallsConfig(kick_prob=0.3, wall_prob=0.6, occluder_prob=0.6, occluder_width=0.3),
], ids=["occluder-gravity", "walls-and-random-occluders"])
def test_clips_equal_ballssim_trajectories(config: BallsConfig) -> None:
    """Batched generation (and its batched renderer) reproduces BallsSim bit for bit."""
    clip_set = generate_clips(config, 5, 25, seed=9)
    for i in range(5):
        sim = BallsSim(config, clip_rng(9, i))
        for t in range(25):
            state = sim.state() if t == 0 else sim.step()
            assert np.array_equal(sim.render(), clip_set.frames[i, t]), (i, t)
            for key, value in clip_set.state.items():
                assert np.array_equal(value[i, t], state[key].astype(value.dtype)), (key, i, t)
        assert clip_set.num_balls[i] == state["num_balls"]


def test_walls_are_solid_and_furniture_is_drawn() -> None:
    config = BallsConfig(image_size=64, wall_prob=1.0, occluder_prob=1.0, occluder_width=0.3, kick_prob=0.2,
                         min_balls=3, max_balls=3)
    clips = generate_clips(config, 24, 60, seed=5)
    wall, x = clips.state["wall"][:, :, None], clips.state["positions"][..., 0].astype(np.float64)
    r, present = clips.state["radii"], clips.state["present"]
    assert np.all(wall[..., 1] - wall[..., 0] > 0.04)  # every clip has its wall (wall_prob=1), 3-4 pixels wide
    # No ball ever overlaps its wall, and no ball changes side: the wall is solid.
    eps = 1e-6
    clear = (x + r <= wall[..., 0] + eps) | (x - r >= wall[..., 1] - eps)
    assert clear[present].all()
    left = x < 0.5 * (wall[..., 0] + wall[..., 1])
    assert np.array_equal(left, np.broadcast_to(left[:, :1], left.shape) | ~present)
    # Balls do reach the wall and bounce: some ball touches a face and its x velocity flips.
    vx = clips.state["velocities"][..., 0]
    touching = present & ((np.abs(x + r - wall[..., 0]) < 0.02) | (np.abs(x - r - wall[..., 1]) < 0.02))
    flips = np.sign(vx[:, 1:]) != np.sign(vx[:, :-1])
    assert (touching[:, 1:] & flips).sum() > 10
    # The wall is painted (light gray) where no ball is, and the clip's occluder sits on top of everything.
    size = config.image_size
    for i in range(4):
        c0, c1 = (np.rint(clips.state["wall"][i, 0] * size)).astype(int)
        o0, o1 = clips.state["occluder"][i, 0]
        frame = clips.frames[i, 0]
        assert np.all(frame[:, o0:o1] == config.occluder_color)
        visible_wall = [c for c in range(c0, c1) if not o0 <= c < o1]
        if visible_wall:
            column = frame[:, visible_wall[0]]
            assert (column == config.wall_color).all(-1).mean() > 0.5
    # Hidden balls are flagged by the clip's own occluder.
    centre_px = x * size
    behind = (centre_px >= clips.state["occluder"][..., :1]) & (centre_px < clips.state["occluder"][..., 1:])
    assert np.array_equal(clips.state["occluded"], behind & present)


def test_furniture_config_validation() -> None:
    with pytest.raises(ValueError, match="wall_prob"):
        BallsConfig(wall_prob=1.5)
    with pytest.raises(ValueError, match="chamber"):
        BallsConfig(wall_prob=0.5, wall_x_range=(0.2, 0.8))
    # Without furniture, the random stream (and so every clip) is what it was: furniture draws only when enabled.
    plain = generate_clips(BallsConfig(image_size=32, max_balls=2), 3, 6, seed=2)
    assert np.all(plain.state["wall"] == 0) and np.all(plain.state["occluder"] == 0)


def test_generate_clips_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="num_clips"):
        generate_clips(SMALL, 0, 8, seed=0)
    with pytest.raises(ValueError, match="clip_length"):
        generate_clips(SMALL, 2, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_clips(SMALL, 2, 8, seed=-1)


def test_cache_round_trip_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = generate_clips(SMALL, 7, 9, seed=2)
    first = load_or_generate(tmp_path, SMALL, 7, 9, seed=2)
    frames_path, state_path = cache_paths(tmp_path, SMALL, 7, 9, 2)
    assert frames_path.exists() and state_path.exists()
    assert not list(tmp_path.glob("*.tmp"))

    def must_not_generate(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache hit expected, but clips were regenerated")

    monkeypatch.setattr(clips_module, "_fill", must_not_generate)
    second = load_or_generate(tmp_path, SMALL, 7, 9, seed=2)
    for got in (first, second):
        assert isinstance(got, ClipSet)
        assert np.array_equal(got.frames, reference.frames)
        assert np.array_equal(got.num_balls, reference.num_balls)
        for key, value in reference.state.items():
            assert got.state[key].dtype == value.dtype and np.array_equal(got.state[key], value)
    # Different arguments are a different entry.
    assert cache_paths(tmp_path, SMALL, 7, 9, 3) != (frames_path, state_path)


def test_corrupt_cache_is_regenerated_with_warning(tmp_path: Path) -> None:
    reference = load_or_generate(tmp_path, SMALL, 3, 5, seed=1, mmap=False)
    _, state_path = cache_paths(tmp_path, SMALL, 3, 5, 1)
    state_path.write_bytes(b"not a zip file")
    with pytest.warns(RuntimeWarning, match=state_path.name):
        again = load_or_generate(tmp_path, SMALL, 3, 5, seed=1)
    assert np.array_equal(again.frames, reference.frames)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_or_generate(tmp_path, SMALL, 3, 5, seed=1)  # repaired: loads silently


def test_clips_import_without_torch_or_gymnasium() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['gymnasium'] = None\n"
        "import envs, envs.clips, envs.physics\n"
        "envs.clips.generate_clips(envs.BallsConfig(image_size=16), 1, 2, 0)\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


# ------------------------------------------------------------------------------------------------- gym env


def test_check_env_passes() -> None:
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import envs.bouncing_balls  # noqa: F401  (registers the id)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Made through the registry so the checker also has a spec to try the other render mode with.
        check_env(gymnasium.make("BouncingBalls-v0", config=BallsConfig(occluder=True)).unwrapped)


def test_registered_env_is_deterministic_per_seed() -> None:
    import gymnasium

    # The "module:id" form imports the registering module itself, so this works in a fresh process.
    env = gymnasium.make("envs.bouncing_balls:BouncingBalls-v0", config=BallsConfig(kick_prob=0.3))

    def rollout(seed: int) -> tuple[np.ndarray, np.ndarray]:
        obs, info = env.reset(seed=seed)
        frames, positions = [obs], [info["positions"]]
        for _ in range(20):
            obs, reward, terminated, truncated, info = env.step(0)
            assert reward == 0.0 and not terminated and not truncated
            frames.append(obs)
            positions.append(info["positions"])
        assert np.array_equal(env.render(), obs)
        return np.stack(frames), np.stack(positions)

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    with pytest.raises(ValueError, match="action"):
        env.unwrapped.step(3)
    assert isinstance(envs.BouncingBallsEnv, type)  # lazy attribute on the package


# ------------------------------------------------------------------------------------------------- dataset


def test_window_dataset_items() -> None:
    clip_set = generate_clips(SMALL, 4, 10, seed=0)
    ds = WindowDataset(clip_set.frames, window=6, state=clip_set.state)
    assert len(ds) == 4 * (10 - 6 + 1)
    item = ds[7]
    clip, start = int(item["clip"]), int(item["start"])
    assert (clip, start) == (1, 2)
    assert item["frames"].dtype == torch.uint8 and item["frames"].shape == (6, 3, 32, 32)
    assert item["frames"].is_contiguous()
    assert item["clip"].dtype == torch.int64 and item["start"].dtype == torch.int64
    expected = clip_set.frames[clip, start : start + 6].transpose(0, 3, 1, 2)
    assert np.array_equal(item["frames"].numpy(), expected)
    assert item["state/positions"].shape == (6, 3, 2) and item["state/positions"].dtype == torch.float32
    assert item["state/kicked"].dtype == torch.bool
    assert np.array_equal(item["state/kicked"].numpy(), clip_set.state["kicked"][clip, start : start + 6])
    # Windows never cross a clip boundary, and negative indices count from the end.
    for i in range(len(ds)):
        c, s = ds.index_of(i)
        assert s + 6 <= 10 and 0 <= c < 4
    assert int(ds[-1]["clip"]) == 3 and int(ds[-1]["start"]) == 4
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_window_dataset_stride_memmap_and_errors(tmp_path: Path) -> None:
    clip_set = load_or_generate(tmp_path, SMALL, 3, 9, seed=0)
    assert isinstance(clip_set.frames, np.memmap)
    ds = WindowDataset(clip_set.frames, window=4, stride=2)
    assert len(ds) == 3 * 3  # starts 0, 2, 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable array" warning from torch
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch["frames"].shape == (5, 4, 3, 32, 32)
    with pytest.raises(ValueError, match=r"window \(10\).*\(9\)"):
        WindowDataset(clip_set.frames, window=10)
    with pytest.raises(ValueError, match="stride"):
        WindowDataset(clip_set.frames, window=2, stride=0)
    with pytest.raises(ValueError, match="state"):
        WindowDataset(clip_set.frames, window=2, state={"positions": np.zeros((3, 5, 2))})


def test_split_clips() -> None:
    train, val = split_clips(20, 0.25, seed=0)
    assert len(val) == 5 and len(train) == 15
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(20))
    again = split_clips(20, 0.25, seed=0)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, split_clips(20, 0.25, seed=1)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        split_clips(20, 1.0, seed=0)


def test_big_balls_that_block_each_other_are_laid_out_again_not_refused(monkeypatch):
    from envs import physics
    from envs.physics import sample_initial

    # Two balls of radius 0.25-0.26: the first one near the middle leaves the second no room anywhere, so a
    # ball-by-ball rejection sampler fails on such a layout; drawing the whole layout again finds one.
    config = BallsConfig(min_balls=2, max_balls=2, radius_range=(0.25, 0.26))
    rng = np.random.default_rng(0)
    for _ in range(50):
        state = sample_initial(config, rng)
        (x0, y0), (x1, y1) = state["positions"][:2]
        r0, r1 = state["radii"][:2]
        assert np.hypot(x1 - x0, y1 - y0) > r0 + r1
        assert all(r <= p <= 1 - r for (p, r) in ((x0, r0), (y0, r0), (x1, r1), (y1, r1)))

    # What finds no layout gets the error that says what to change (a tiny budget of tries stands in for a box
    # too crowded to fill: one that is over-full by area is refused by BallsConfig itself).
    monkeypatch.setattr(physics, "_MAX_PLACEMENT_TRIES", 1)
    monkeypatch.setattr(physics, "_MAX_LAYOUTS", 3)
    tight = BallsConfig(min_balls=2, max_balls=2, radius_range=(0.26, 0.267))
    with pytest.raises(ValueError, match="could not place 2 balls.*3 layouts.*reduce max_balls or radius_range"):
        for _ in range(20):
            sample_initial(tight, rng)
