"""The fast evaluation path gives today's figures: F-score (pool, cached ground truth, bounded
queries) against the plain definition on real grids; one forward for all view counts against a
forward per view count; float32 thresholds; the mean-shape baseline by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from r2n2.data.transforms import to_images
from r2n2.evaluation import scoring as S
from r2n2.evaluation.fscore import FScorer, fscore_points, score_packed, surface_points
from r2n2.evaluation.metrics import voxel_iou_thresholds


def _real_grids(shared_data) -> dict[str, np.ndarray]:
    from r2n2.data.formats import load_voxels

    b = shared_data / "binvox"
    bench = load_voxels(b / "piaomz_Pix2Vox_Keras__bench_modelt_transposed021.binvox")
    return {
        "bench gt": bench,
        "bench prediction": load_voxels(b / "piaomz_Pix2Vox_Keras__bench_predict001.binvox"),
        "chair": load_voxels(shared_data / "r2n2-sample/ShapeNetVox32/03001627/pix2voxkeras_chair/model.binvox"),
        "shapenet model": load_voxels(b / "lraxue_3D-R2N2__model.binvox"),
        "bench shifted": np.roll(bench, 1, axis=0),
        "empty": np.zeros_like(bench),
    }


def _reference(pred: np.ndarray, gt: np.ndarray, n: int) -> float:
    """r2n2-eval's F-score before the fast path: fresh surfaces and balanced trees per sample."""
    return fscore_points(surface_points(pred, n, seed=0), surface_points(gt, n, seed=1))


def test_fast_fscore_equals_the_definition_on_real_grids(shared_data):
    grids = _real_grids(shared_data)
    names = list(grids)
    pairs = [(p, g) for p in names for g in ("bench gt", "chair", "empty")]  # 18 pairs, repeated gts
    gt_keys = [g for _, g in pairs]
    preds = np.stack([grids[p] for p, _ in pairs])
    gts = np.stack([grids[g] for _, g in pairs])
    expected = np.array([_reference(grids[p], grids[g], 2048) for p, g in pairs])
    with FScorer(workers=1, n=2048) as pool:  # a real worker process
        fast = pool.submit(gt_keys, gts, preds).result()
    assert np.array_equal(fast, expected)  # equal, not close: the same points and decisions
    assert 0 < expected[names.index("bench prediction") * 3] < expected[names.index("bench gt") * 3]
    inline = score_packed(
        gt_keys,
        np.packbits(gts.reshape(len(gts), -1), 1),
        np.packbits(preds.reshape(len(preds), -1), 1),
        gts.shape[1:],
        2048,
    )
    assert np.array_equal(inline, expected)


def _tiny_split(trained, views: int):
    import hydra

    from r2n2.train.checkpoint import load_module

    run_dir, _ = trained
    module, ckpt = load_module(run_dir / "checkpoints" / "best.ckpt")
    dm = hydra.utils.instantiate({**ckpt["hyper_parameters"]["data"], "eval_views": views, "num_workers": 0})
    dm.prepare_data()
    dm.setup()
    return module.net.eval(), dm.datasets["test"]


def test_one_forward_for_all_view_counts_equals_a_forward_per_view_count(trained):
    """The streaming scorer (shared encoder, pooled F-score) against the way r2n2-eval scored before:
    a dataset opened at each view count, a plain forward per view count, IoU and F-score per sample."""
    net, split = _tiny_split(trained, 3)
    samples = S.all_samples(split, 3)
    thresholds = (0.2, 0.3, 0.4, 0.5)
    with FScorer(workers=1, n=1024) as pool:
        fast = S.score_network(
            net,
            samples,
            [1, 2, 3],
            thresholds,
            {v: (0.3,) for v in (1, 2, 3)},
            pool,
            torch.device("cpu"),
            None,
            batch_size=4,
            progress=False,
        )
    from r2n2.data.dataset import PackedDataset

    for v in (1, 2, 3):
        ds = PackedDataset(split.folder, v, split.categories, seed=split.seed)  # today's per-view-count dataset
        items = [ds[i] for i in range(len(ds))]
        images = to_images(torch.from_numpy(np.stack([it["rgba"] for it in items])))
        gts = torch.from_numpy(np.stack([it["voxels"] for it in items])).bool()
        with torch.no_grad():
            probs = torch.sigmoid(net(images).float())
        iou = voxel_iou_thresholds(probs, gts, torch.tensor(thresholds)).numpy()
        np.testing.assert_allclose(fast[v].iou, iou, atol=1e-6)
        fs = [_reference(p, g, 1024) for p, g in zip((probs >= 0.3).numpy(), gts.numpy())]
        np.testing.assert_allclose(fast[v].fscore[0.3], fs, atol=1e-12)
    assert S.ViewCounts(net, [1, 3], None).shared  # the seed model runs the shared-encoder path


def _shapenet_split(shared_data, folder, names: tuple[str, ...]):
    """A packed split of real ShapeNet objects (../shared/data/r2n2-sample) with all 24 renderings
    each and every (object, rendering) pair a sample: protocol=ours on ShapeNet's layout, where the
    samples of an object share its renderings."""
    from r2n2.data.cache import write_split
    from r2n2.data.dataset import PackedDataset
    from r2n2.data.formats import load_voxels
    from r2n2.data.formats.images import read_rgba

    root = shared_data / "r2n2-sample"
    images, grids, objects = [], [], []
    for name in names:
        grid = next((root / "ShapeNetVox32").glob(f"*/pix2voxkeras_{name}/model.binvox"))
        pngs = sorted(
            (root / "ShapeNetRendering" / grid.parent.parent.name / grid.parent.name / "rendering").glob("*.png")
        )
        objects.append({"id": name, "category": name, "first": len(images), "count": len(pngs)})
        images += [read_rgba(p, 127) for p in pngs]
        grids.append(load_voxels(grid))
    samples = [(o, v) for o, rec in enumerate(objects) for v in range(rec["count"])]
    write_split(folder, np.stack(images), np.stack(grids), objects, samples)
    return PackedDataset(folder, 5, sorted(names))


@pytest.mark.slow
def test_each_rendering_is_encoded_once_and_the_figures_are_the_plain_forwards(trained, shared_data, tmp_path):
    """Real ShapeNet renderings, 1 and 5 views: the scorer encodes each distinct rendering once (48
    for 48 samples, not 48 x 5) and gives exactly the IoU (and the F-score) of a plain forward of each
    sample's own 5 views. Samples are scored in a shuffled order, so a view mapped to another sample's
    rendering, or a feature row read before it is written, changes the figures."""
    net, _ = _tiny_split(trained, 1)
    split = _shapenet_split(shared_data, tmp_path / "s", ("chair", "airplane"))
    ours = S.all_samples(split, 5)
    order = np.random.default_rng(0).permutation(len(ours))
    samples = S.Samples(split, ours.rows[order], ours.obj[order], ours.slots[order])
    assert len(np.unique(samples.slots)) == 48  # every rendering seen, by up to 5 samples each
    encoded = []
    hook = net.encoder.register_forward_hook(lambda m, args, out: encoded.append(len(args[0])))
    thresholds = (0.2, 0.3, 0.4)
    try:
        with FScorer(workers=0, n=1024) as pool:
            fast = S.score_network(
                net,
                samples,
                [1, 5],
                thresholds,
                {5: (0.3,)},
                pool,
                torch.device("cpu"),
                None,
                batch_size=16,
                progress=False,
            )
    finally:
        hook.remove()
    check = S.CHECK_SAMPLES * (5 + 1 + 5)  # the structure check: 5 views shared, then plain at 1 and 5 views
    assert sum(encoded) == check + 48, encoded
    gts = torch.from_numpy(np.stack([split[int(r)]["voxels"] for r in samples.rows])).bool()
    for v in (1, 5):
        with torch.no_grad():
            probs = torch.cat(
                [
                    torch.sigmoid(net(to_images(samples.rgba(np.arange(i, i + 16), v))).float())
                    for i in range(0, len(samples), 16)
                ]
            )
        np.testing.assert_array_equal(fast[v].iou, voxel_iou_thresholds(probs, gts, torch.tensor(thresholds)).numpy())
    fs = [_reference(p, g, 1024) for p, g in zip((probs >= 0.3).numpy(), gts.numpy())]
    np.testing.assert_allclose(fast[5].fscore[0.3], fs, atol=1e-12)


class _Constant(torch.nn.Module):
    """Predicts p everywhere, whatever the image (a network of another shape: no encoder)."""

    def __init__(self, p: float):
        super().__init__()
        self.logit = float(np.log(p / (1 - p)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.full((images.shape[0], 32, 32, 32), self.logit, device=images.device)


def test_probabilities_just_below_the_threshold_stay_empty(trained):
    """p = 0.29995 is not occupied at t = 0.3. Before the fix, r2n2-eval stored float16
    probabilities, which round 0.29995 to 0.30005, so the grid counted as full (IoU = occupancy)."""
    assert float(torch.tensor(0.29995).half()) >= 0.3  # the defect this guards against
    _, split = _tiny_split(trained, 1)
    samples = S.all_samples(split, 1)
    res = S.score_network(
        _Constant(0.29995), samples, [1], (0.29, 0.3), {}, None, torch.device("cpu"), None, progress=False
    )[1]
    assert (res.iou_at(0.3) == 0).all()  # an empty prediction of a non-empty object
    assert (res.iou_at(0.29) > 0).all()


# --- the mean-shape baseline, by hand --------------------------------------------------------------


def _write_split(folder, grids: list[np.ndarray], categories: list[str], samples: list[tuple[int, int]]):
    """A packed split (r2n2.data.cache.write_split) of one 2 x 2 blank image per object."""
    from r2n2.data.cache import write_split

    objects = [{"id": f"o{i}", "category": c, "first": i, "count": 1} for i, c in enumerate(categories)]
    write_split(folder, np.zeros((len(grids), 2, 2, 4), np.uint8), np.stack(grids), objects, samples)


def test_mean_shape_baseline_by_hand_and_blind_to_test_voxels(tmp_path):
    """Two training objects of one category, A seen once and B three times (4 samples); one test
    object. Mean = (1 A + 3 B) / 4; the test object's voxels change its IoU, never the prediction."""
    from r2n2.data.dataset import PackedDataset
    from r2n2.evaluation.baselines import baseline_iou, mean_shapes

    a = np.zeros((8, 8, 8), bool)
    a[:4] = True  # 256 voxels
    b = np.zeros((8, 8, 8), bool)
    b[:2] = True  # 128 voxels, inside a
    _write_split(tmp_path / "train", [a, b], ["chair", "chair"], [[0, 0], [1, 0], [1, 0], [1, 0]])
    train = PackedDataset(tmp_path / "train", 1, ["chair"])
    overall, per_category = mean_shapes(train)
    expected = np.zeros((8, 8, 8), np.float32)
    expected[:2], expected[2:4] = 1.0, 0.25  # x < 2: in A and B; 2 <= x < 4: in A only (1 of 4 samples)
    assert np.array_equal(overall.numpy(), expected) and np.array_equal(per_category["chair"].numpy(), expected)

    ious = []
    for k, test_grid in enumerate((a, b, np.ones((8, 8, 8), bool))):
        _write_split(tmp_path / f"test{k}", [test_grid], ["chair"], [[0, 0]])
        test = PackedDataset(tmp_path / f"test{k}", 1, ["chair"])
        assert torch.equal(mean_shapes(train)[0], overall)  # the test split plays no part in it
        ious.append([float(baseline_iou(overall, test, t)[0]) for t in (0.2, 0.3)])
    # at t = 0.2 the prediction is A (p = 0.25 >= 0.2); at t = 0.3 it is B
    assert ious == [[1.0, 0.5], [0.5, 1.0], [0.5, 0.25]]


@pytest.mark.slow
def test_the_shared_encoder_check_tests_structure_not_bf16_rounding(trained):
    """A sharp model (here: the trained net with its last layer centred and made steeper; longer training
    sharpens a model too) turns bf16's rounding into probability differences above 0.01 between the
    two batch layouts (a 4-epoch CPU checkpoint: 0.01, and r2n2-eval fell back to 14 minutes); the
    check runs in float32, so such a model keeps the one-forward path. A network whose encoder does
    depend on the batch (BatchNorm on batch statistics) still runs each view count separately."""
    net, split = _tiny_split(trained, 3)
    last = [m for m in net.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))][-1]
    images = to_images(S.all_samples(split, 3).rgba(np.arange(4), 3))
    bf16 = S.ViewCounts(net, [1, 3], torch.bfloat16)
    with torch.no_grad():  # logits centred on 0 and 1e4 times steeper: many voxels on the edge
        last.bias.sub_(net(images).median())
        last.weight.mul_(1e4)
        last.bias.mul_(1e4)
    shared, plain = bf16._shared(images), {k: bf16._forward(images[:, :k]) for k in (1, 3)}
    assert max(float((shared[k] - plain[k]).abs().max()) for k in (1, 3)) > 1e-2  # bf16 rounding shows
    bf16.check(images)
    assert bf16.shared and bf16.dtype is torch.bfloat16
    for m in net.modules():  # batch statistics: the encoder's output depends on what else is in the batch
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
    batch_dependent = S.ViewCounts(net, [1, 3], torch.bfloat16)
    batch_dependent.check(images)
    assert not batch_dependent.shared


# --- the recognition baselines at ShapeNet's size: the same answers without (images x objects) arrays --


def test_retrieval_in_blocks_finds_the_nearest_embedding_as_before(trained, monkeypatch):
    """recognition.fit/predict no longer build the (training images x training objects) embedding
    bank nor the (test x training images) similarities; in blocks of 5 they return, for every test
    image, the training image that the plain cosine of the embeddings ranks first, and the ridge
    weights of the one-hot product."""
    import torch.nn.functional as F

    from r2n2.evaluation import recognition as R

    _, test = _tiny_split(trained, 1)
    import hydra

    from r2n2.train.checkpoint import load_module

    _, ckpt = load_module(trained[0] / "checkpoints" / "best.ckpt")
    dm = hydra.utils.instantiate({**ckpt["hyper_parameters"]["data"], "num_workers": 0})
    dm.setup()
    train = dm.datasets["train"]
    monkeypatch.setattr(R, "CHUNK", 5)  # several blocks even on the tiny split
    fitted = R.fit(train)
    f_train = fitted.features(R.small_images(train, R.own_view_slots(train)))
    f_test = fitted.features(R.small_images(test, R.own_view_slots(test)))
    # before: one-hot targets, the (images x objects) bank, the (test x images) similarities
    obj = train.samples[:, 0]
    onehot = torch.zeros(len(obj), len(fitted.shapes), dtype=torch.float64)
    onehot[torch.arange(len(obj)), torch.from_numpy(obj)] = 1
    gram = f_train.T @ f_train
    gram.diagonal().add_(R.RIDGE * float(gram.diagonal().mean()))
    torch.testing.assert_close(fitted.w_object, torch.linalg.solve(gram, f_train.T @ onehot), rtol=1e-9, atol=1e-12)
    bank = F.normalize(f_train @ fitted.w_object, dim=1)
    plain = (F.normalize(f_test @ fitted.w_object, dim=1) @ bank.T).argmax(1).numpy()
    assert len(f_test) > R.CHUNK and len(bank) > R.CHUNK
    assert np.array_equal(fitted.nearest(f_test), plain)
    got = R.predict(fitted, test, R.own_view_slots(test), test.samples[:, 0])
    assert np.array_equal(got["retrieval"][1], fitted.bank_obj[plain])
    from r2n2.evaluation.baselines import object_voxels

    shapes, train_shapes = object_voxels(test).flatten(1), fitted.shapes.flatten(1).float()
    inter = shapes @ train_shapes.T
    iou = inter / (shapes.sum(1, keepdim=True) + train_shapes.sum(1)[None] - inter)
    assert np.array_equal(got["oracle nearest neighbour"][1], iou.argmax(1).numpy()[test.samples[:, 0]])


def test_iou_at_many_thresholds_by_histogram_equals_the_metric(trained):
    """scoring.iou_at_thresholds (one bucketize and histogram) gives r2n2.evaluation.metrics.voxel_iou_thresholds'
    values exactly: a trained network's probabilities, values exactly at and just below thresholds,
    unsorted thresholds, an empty target and prediction, bf16 input."""
    net, split = _tiny_split(trained, 1)
    with torch.no_grad():
        probs = torch.sigmoid(net(to_images(S.all_samples(split, 1).rgba(np.arange(6), 1))).float())
    gts = torch.from_numpy(np.stack([split[i]["voxels"] for i in range(6)])).bool()
    probs[0, 0, 0, :4] = torch.tensor([0.3, 0.29995, 0.05, 0.95])
    probs[1], gts[1] = 0.0, False  # both empty: 1
    thresholds = torch.tensor([0.5, 0.05, 0.3, 0.29, 0.95, 0.2, 0.4])
    for p in (probs, probs.bfloat16()):
        expected = voxel_iou_thresholds(p, gts, thresholds)
        assert torch.equal(S.iou_at_thresholds(p, gts, thresholds), expected)
    assert expected[1].eq(1).all() and 0 < float(expected[0, 2]) < 1


def test_baselines_score_the_same_with_the_fscore_on_the_device(trained):
    """score_indexed with the batched device F-score (r2n2/evaluation/fscore_device.py, queued and computed at
    the first result; on the CPU here, as on a GPU) gives the pool's figures for a constant
    prediction and for a training shape per sample."""
    from r2n2.evaluation.baselines import object_voxels
    from r2n2.evaluation.fscore_device import DeviceFScorer

    _, split = _tiny_split(trained, 1)
    samples = S.all_samples(split, 1)
    shapes = object_voxels(split)
    table = torch.cat([shapes.mean(0, keepdim=True), shapes])  # a mean shape, then the shapes themselves
    index = np.where(np.arange(len(samples)) % 2 == 0, 0, 1 + (samples.obj + 1) % len(shapes))
    with FScorer(workers=0, n=1024) as pool:
        expected = S.score_indexed(table, index, samples, (0.3, 0.4), (0.3,), pool)
    got = S.score_indexed(table, index, samples, (0.3, 0.4), (0.3,), DeviceFScorer("cpu", n=1024))
    assert np.array_equal(got.iou, expected.iou) and np.array_equal(got.fscore[0.3], expected.fscore[0.3])
    assert len(np.unique(expected.fscore[0.3])) > 2
