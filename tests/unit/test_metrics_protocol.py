"""StyleGAN-V selection rules, folder reading, streaming statistics and scores on plain arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from echo_core.errors import DataError
from echo_core.metrics import protocol as P
from echo_core.metrics.scores import fid_infinity, inception_score, kid
from echo_core.metrics.stats import FeatureStore, StreamingMoments


def write_frame(path: Path, value: int, size: int = 8, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size) if mode == "L" else (size, size, 3), value, np.uint8)
    Image.fromarray(arr).save(path)


# ------------------------------------------------------------------------------------ selection


def test_select_frames_is_first_n_in_sorted_order():
    paths = ["b/0001.jpg", "a/0001.jpg", "b/0000.jpg", "a/0000.jpg"]
    assert P.select_frames(paths, 3) == ["a/0000.jpg", "a/0001.jpg", "b/0000.jpg"]
    assert P.select_frames(paths, None) == sorted(paths)


def test_list_frames_is_recursive_sorted_relative_paths(tmp_path):
    for rel in ["vid_b/0000.jpg", "vid_a/0001.jpg", "vid_a/0000.jpg", "vid_a-x/0000.jpg", "flat.png"]:
        write_frame(tmp_path / rel, 10)
    (tmp_path / "notes.txt").write_text("ignored: not an image")
    # string sort of relative paths, like StyleGAN-V's ImageFolderDataset ('-' sorts before '/').
    assert P.list_frames(tmp_path) == ["flat.png", "vid_a-x/0000.jpg", "vid_a/0000.jpg", "vid_a/0001.jpg",
                                       "vid_b/0000.jpg"]


def test_list_videos_sorted_depth2_and_strict(tmp_path):
    for rel in ["v2/0001.jpg", "v2/0000.jpg", "v1/0000.jpg"]:
        write_frame(tmp_path / rel, 10)
    videos = P.list_videos(tmp_path)
    assert [v.name for v in videos] == ["v1", "v2"]
    assert videos[1].frames == ("v2/0000.jpg", "v2/0001.jpg")
    (tmp_path / "v1" / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="meta.json"):
        P.list_videos(tmp_path)


def test_list_videos_rejects_files_at_top_and_missing_root(tmp_path):
    write_frame(tmp_path / "stray.jpg", 1)
    with pytest.raises(DataError, match="stray.jpg"):
        P.list_videos(tmp_path)
    with pytest.raises(DataError, match="not found"):
        P.list_frames(tmp_path / "nope")


def test_real_clips_discard_short_take_first_and_offsets_in_inclusive_range():
    videos = [("c", 5), ("a", 3), ("b", 4), ("d", 9)]  # n*s = 2*2 = 4: "a" (3 frames) is discarded
    clips = P.plan_real_clips(videos, n_frames=2, stride=2, max_clips=2, seed=0)
    assert [c.video for c in clips] == ["b", "c"]
    for clip, length in zip(clips, (4, 5), strict=True):
        start = clip.indices[0]
        assert 0 <= start <= length - 4 + 2 - 1
        assert clip.indices == (start, start + 2)
        assert clip.indices[-1] <= length - 1


def test_real_offsets_cover_sgv_range_and_are_seeded():
    videos = [(f"v{i:03d}", 5) for i in range(300)]
    plan = P.plan_real_clips(videos, n_frames=2, stride=2, max_clips=300, seed=7)
    assert {c.indices[0] for c in plan} == {0, 1, 2}  # randint(0, L - n*s + s - 1) inclusive
    assert plan == P.plan_real_clips(videos, 2, 2, 300, seed=7)
    assert plan != P.plan_real_clips(videos, 2, 2, 300, seed=8)
    assert {c.indices[0] for c in P.plan_real_clips(videos, 2, 2, 300, 7, random_offset=False)} == {0}


def test_fake_clips_start_at_zero_first_n_and_short_is_an_error():
    videos = [("s2", 20), ("s1", 16), ("s3", 3)]
    plan = P.plan_fake_clips(videos, n_frames=16, stride=1, max_clips=2)
    assert [(c.video, c.indices) for c in plan] == [("s1", tuple(range(16))), ("s2", tuple(range(16)))]
    with pytest.raises(DataError, match="'s3' has 3 frames"):
        P.plan_fake_clips(videos, n_frames=16, stride=1, max_clips=3)


def test_check_count_refuses_fewer_unless_allowed():
    with pytest.raises(DataError, match="--allow-fewer"):
        P.check_count(10, 2048, "real videos", allow_fewer=False)
    P.check_count(10, 2048, "real videos", allow_fewer=True)
    with pytest.raises(DataError, match="nothing"):
        P.check_count(0, 2048, "real videos", allow_fewer=True)


def test_is_splits_are_consecutive_blocks_of_the_50k_constant():
    assert P.is_split_bounds(50_000)[:2] == [(0, 5000), (5000, 10000)]
    assert P.is_split_bounds(80_000)[-1] == (45_000, 50_000)
    assert P.is_split_bounds(25) == [(i * 25 // 10, (i + 1) * 25 // 10) for i in range(10)]


def test_plan_hash_changes_with_selection():
    a = P.plan_fake_clips([("x", 4), ("y", 4)], 2, 1, 2)
    assert P.plan_hash(a) == P.plan_hash(list(a))
    assert P.plan_hash(a) != P.plan_hash(a[:1])


# --------------------------------------------------------------------------------------- reading


def test_read_frame_gray_to_three_channels_and_resolution_check(tmp_path):
    write_frame(tmp_path / "g.jpg", 77, size=8, mode="L")
    arr = P.read_frame(tmp_path / "g.jpg", resolution=8)
    assert arr.shape == (3, 8, 8) and arr.dtype == np.uint8
    assert np.array_equal(arr[0], arr[2])
    with pytest.raises(DataError, match="g.jpg is 8x8"):
        P.read_frame(tmp_path / "g.jpg", resolution=112)


# ------------------------------------------------------------------------------------ statistics


def test_streaming_moments_equal_full_stack_covariance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 16)) * 3 + 5
    stats = StreamingMoments(16)
    for chunk in np.array_split(x, 7):
        stats.update(chunk.astype(np.float32))
    x32 = x.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(stats.mean, x32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov(ddof=0), np.cov(x32, rowvar=False, ddof=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.cov(ddof=1), np.cov(x32, rowvar=False, ddof=1), rtol=1e-10, atol=1e-12)
    # StyleGAN-V's raw-moment formula gives the same statistic.
    sgv = x32.T @ x32 / len(x32) - np.outer(x32.mean(0), x32.mean(0))
    np.testing.assert_allclose(stats.cov(), sgv, rtol=1e-9, atol=1e-10)


def test_streaming_moments_merge_equals_sequential():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((50, 4)), rng.standard_normal((70, 4)) + 1
    merged = StreamingMoments(4).update(a).merge(StreamingMoments(4).update(b))
    one = StreamingMoments(4).update(np.concatenate([a, b]))
    assert merged.n == 120
    np.testing.assert_allclose(merged.cov(), one.cov(), rtol=1e-12)


def test_feature_store_roundtrip_and_bounds():
    with FeatureStore(5, 3) as store:
        store.append(np.ones((2, 3)))
        store.append(np.full((3, 3), 2.0))
        assert store.array.dtype == np.float32 and store.array[4, 0] == 2.0
        with pytest.raises(ValueError, match="holds 5 rows"):
            store.append(np.ones((1, 3)))


# ---------------------------------------------------------------------------------------- scores


def sgv_inception_score(probs: np.ndarray, num_gen: int, num_splits: int = 10):
    scores = []
    for i in range(num_splits):
        part = probs[i * num_gen // num_splits: (i + 1) * num_gen // num_splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_sgv_and_known_values():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(12) * 0.5, size=200).astype(np.float32)
    assert inception_score(probs, P.is_split_bounds(200, total=200)) == sgv_inception_score(probs, 200)
    uniform = np.full((100, 8), 1 / 8, np.float64)
    assert inception_score(uniform, P.is_split_bounds(100))[0] == pytest.approx(1.0)
    one_hot = np.eye(10)[np.arange(100) % 10] * (1 - 1e-9) + 1e-10
    assert inception_score(one_hot, P.is_split_bounds(100))[0] == pytest.approx(10.0, rel=1e-6)


def sgv_kid(real, fake, num_subsets, max_subset_size, seed):
    """StyleGAN-V's estimator with a seeded RandomState in its call order (fake rows, then real rows)."""
    rs = np.random.RandomState(seed)
    n, m = real.shape[1], min(real.shape[0], fake.shape[0], max_subset_size)
    t = 0
    for _ in range(num_subsets):
        x = fake[rs.choice(fake.shape[0], m, replace=False)]
        y = real[rs.choice(real.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return t / num_subsets / m


def test_kid_matches_sgv_estimator_and_is_unbiased_near_zero():
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((300, 16)), rng.standard_normal((250, 16)) + 0.5
    value, std = kid(real, fake, num_subsets=20, max_subset_size=100, seed=5)
    assert value == pytest.approx(sgv_kid(real, fake, 20, 100, 5), rel=1e-9)
    assert value > 0 and std > 0
    same, _ = kid(real, rng.standard_normal((300, 16)), num_subsets=20, max_subset_size=100, seed=5)
    assert abs(same) < value / 10


def test_fid_infinity_extrapolates_below_finite_n_bias():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((20000, 8))
    mu, sigma = real.mean(0), np.cov(real, rowvar=False, ddof=0)
    fake = rng.standard_normal((4000, 8))  # same distribution: FD_N ~ k/N > 0, FD_inf ~ 0
    value, sizes, fds = fid_infinity(mu, sigma, fake, min_n=500, num_points=5, seed=0)
    assert sizes[0] == 500 and sizes[-1] == 4000 and len(fds) == 5
    assert abs(value) < fds[-1] < fds[0]


def test_reference_manifest_beside_the_videos_is_skipped(tmp_path):
    """A reference set carries manifest.json at its root; StyleGAN-V skips non-image files, so do we."""
    from PIL import Image

    from echo_core.metrics.protocol import list_videos

    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / name / "0000.jpg")
    (tmp_path / "manifest.json").write_text("{}")
    assert [v.name for v in list_videos(tmp_path)] == ["a", "b"]
    (tmp_path / "stray.bin").write_bytes(b"x")
    with pytest.raises(DataError, match="file at the top"):
        list_videos(tmp_path)
