"""Tree models evaluated with vectorized numpy: the API's request-sized inputs, and the batch's exact churn drivers.

The libraries' own paths cost milliseconds for one row (input validation, per-tree calls); the
trees themselves need microseconds. These classes read a fitted model once, then evaluate all of
its trees at once on a float32 matrix:

- ``TreeShap``: exact path-dependent TreeSHAP of an XGBoost booster, the values of
  ``booster.predict(..., pred_contribs=True)``, from lookup tables (the idea of "Fast TreeSHAP v2",
  Yang 2021): a leaf's share of each feature's Shapley value depends on the row only through which
  of the features on the leaf's path the row agrees with, so it is tabulated for every such pattern.
- ``IsolationForestScorer``: ``IsolationForest.score_samples`` of a fitted scikit-learn forest.

tests/test_api_predictor.py proves both equal to the libraries' own results.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import xgboost as xgb
    from sklearn.ensemble import IsolationForest

LEAF = -1  # XGBoost's child index of a leaf
CHUNK_ENTRIES = 1 << 18  # table entries per chunk of rows in TreeShap.contributions
MAX_TABLE_ENTRIES = 1 << 24  # 128 MB of float64: beyond this (very deep trees) TreeShap declines


class TreeShapTooLarge(ValueError):
    """The booster's trees are too deep for lookup tables of a reasonable size."""


class SplitTests:
    """The split tests of XGBoost trees' internal nodes, by XGBoost's rules: a missing value takes the
    node's default side; a numeric value goes left when ``value < threshold``; a category code goes
    right when it is in the node's set, left otherwise (also when it is beyond every set)."""

    def __init__(self, feature: list[int], threshold: list[float], default_left: list[bool],
                 category_sets: list[set[int] | None]):
        self.feature = np.array(feature, dtype=np.intp)  # the input matrix's column
        self.threshold = np.array(threshold, dtype=np.float32)
        self.default_left = np.array(default_left, dtype=bool)
        self.categorical_nodes = np.array([i for i, s in enumerate(category_sets) if s is not None], dtype=np.intp)
        # (codes, categorical nodes): True where the code goes right. The last code is in no set: codes
        # beyond every set are clipped to it.
        codes = max((max(s) + 2 for s in category_sets if s), default=1)
        self.category_right = np.zeros((codes, len(self.categorical_nodes)), dtype=bool)
        for column, node in enumerate(self.categorical_nodes):
            self.category_right[sorted(category_sets[node]), column] = True

    def goes_left(self, x: np.ndarray) -> np.ndarray:
        """(rows, nodes): whether each row goes to the left child at each node."""
        values = np.take(x, self.feature, axis=1, mode="clip")
        missing = np.isnan(values)
        with np.errstate(invalid="ignore"):
            left = values < self.threshold
        if len(self.categorical_nodes):
            codes = np.nan_to_num(values[:, self.categorical_nodes], nan=0.0).astype(np.intp)
            np.clip(codes, 0, len(self.category_right) - 1, out=codes)
            left[:, self.categorical_nodes] = ~np.take_along_axis(self.category_right, codes, axis=0)
        return np.where(missing, self.default_left, left)


@dataclass
class _Leaf:
    value: float
    path: list[tuple[int, bool, int]]  # (internal node's number in SplitTests, went left, slot)
    zero_fraction: list[float]  # per slot: the share of training cover that follows the path there
    features: list[int]  # per slot: the booster's feature


def _parse(booster: xgb.Booster, columns: np.ndarray) -> tuple[SplitTests, list[_Leaf]]:
    """The split tests of every internal node, and every leaf that some split leads to."""
    model = json.loads(bytes(booster.save_raw("json")))["learner"]
    params = model["learner_model_param"]
    if int(params.get("num_class", "0")) > 1 or int(params.get("num_target", "1")) > 1:
        raise ValueError("TreeShap handles single-output boosters only")
    feature, threshold, default_left, category_sets, leaves = [], [], [], [], []
    for tree in model["gradient_booster"]["model"]["trees"]:
        left, right, split = tree["left_children"], tree["right_children"], tree["split_indices"]
        cover, number = tree["sum_hessian"], {}
        for node, child in enumerate(left):
            if child != LEAF:
                number[node] = len(feature)
                feature.append(columns[split[node]])
                threshold.append(tree["split_conditions"][node])
                default_left.append(bool(tree["default_left"][node]))
                category_sets.append(None)
        for node, start, size in zip(tree["categories_nodes"], tree["categories_segments"], tree["categories_sizes"],
                                     strict=True):
            category_sets[number[node]] = set(tree["categories"][start:start + size])
        stack = [(0, [])]  # depth first: (node, [(ancestor, went left), ...])
        while stack:
            node, path = stack.pop()
            if left[node] != LEAF:
                stack += [(right[node], [*path, (node, False)]), (left[node], [*path, (node, True)])]
                continue
            if not path:
                continue  # a tree of one leaf explains nothing
            slots: dict[int, int] = {}  # a feature tested twice on a path is one player: one slot
            leaf = _Leaf(tree["split_conditions"][node], [], [], [])
            for i, (ancestor, went_left) in enumerate(path):
                slot = slots.setdefault(split[ancestor], len(slots))
                if slot == len(leaf.zero_fraction):
                    leaf.zero_fraction.append(1.0)
                    leaf.features.append(split[ancestor])
                child = path[i + 1][0] if i + 1 < len(path) else node
                leaf.zero_fraction[slot] *= cover[child] / cover[ancestor]
                leaf.path.append((number[ancestor], went_left, slot))
            leaves.append(leaf)
    return SplitTests(feature, threshold, default_left, category_sets), leaves


def _shapley_weights(players: int) -> np.ndarray:
    """W, (2^n, 2^n · n) for n players: W[M, p·n + k] sums the Shapley weights |S|!(n−|S|−1)!/n! of
    the coalitions S that give player k's value for agreement pattern p a term Π_{j∈M} r_j, i.e.
    S ⊆ p∖{k} (a player outside p contributes o = 0) and M = the players outside S other than k."""
    n, everyone = players, (1 << players) - 1
    weights = np.zeros((1 << n, (1 << n) * n))
    for pattern in range(1 << n):
        for k in range(n):
            agreeing = pattern & ~(1 << k)
            coalition = agreeing
            while True:  # every subset of `agreeing`
                size = coalition.bit_count()
                weights[everyone & ~(1 << k) & ~coalition, pattern * n + k] += (
                    math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n))
                if coalition == 0:
                    break
                coalition = (coalition - 1) & agreeing
    return weights


class TreeShap:
    """Exact TreeSHAP (path-dependent, cover-weighted: XGBoost's ``pred_contribs=True``) of a
    single-output booster, without the bias column.

    A leaf with value v whose path tests the distinct features ("players") k = 1..K enters the
    expected prediction given a coalition S as v · Π_{k∈S} o_k · Π_{k∉S} r_k, where r_k is the share
    of training cover that follows the path at feature k's nodes and o_k is 1 when the row itself
    follows it there, else 0. The leaf's share of feature k's Shapley value therefore depends on
    the row only through the pattern of the o's: all 2^K patterns are tabulated when the model
    loads (a leaf with fewer players is padded with ones that never matter: o = r = 1, Shapley value
    0). A row then costs the split tests, one pattern per leaf and one table row per leaf.
    """

    def __init__(self, booster: xgb.Booster, columns: np.ndarray, n_features: int):
        """``columns[i]``: the input matrix's column of the booster's feature i; contributions are
        reported for the booster's ``n_features`` features, in its order."""
        self.tests, leaves = _parse(booster, columns)
        self.n_features, self.leaf_count = n_features, len(leaves)
        self.players = players = max((len(leaf.features) for leaf in leaves), default=0)
        if self.leaf_count * (players << players) > MAX_TABLE_ENTRIES:
            raise TreeShapTooLarge(f"{self.leaf_count} leaves with up to {players} features on a path: "
                                   f"tables of {self.leaf_count * (players << players):,} entries")
        if not leaves:
            return
        depth = max(len(leaf.path) for leaf in leaves)
        zero_fraction = np.ones((len(leaves), players))
        slot_feature = np.full((len(leaves), players), n_features, dtype=np.intp)  # padding: a dropped column
        # The nodes on each leaf's path, (path position, leaf): reductions over the position run along
        # contiguous memory, many times faster than over a short last axis.
        self.element_node = np.zeros((depth, len(leaves)), dtype=np.intp)
        self.element_left = np.zeros((depth, len(leaves)), dtype=bool)
        self.element_bit = np.zeros((depth, len(leaves)), dtype=np.uint16)  # padding: 0, never fails
        for i, leaf in enumerate(leaves):
            zero_fraction[i, :len(leaf.zero_fraction)] = leaf.zero_fraction
            slot_feature[i, :len(leaf.features)] = leaf.features
            for j, (node, went_left, slot) in enumerate(leaf.path):
                self.element_node[j, i], self.element_left[j, i], self.element_bit[j, i] = node, went_left, 1 << slot
        self.everyone = (1 << players) - 1

        # R[leaf, M] = Π_{j∈M} r_j for every set M of a leaf's players, then the table
        # T[leaf, pattern, k] = v · (o_k − r_k) · Σ_M W[M, (pattern, k)] · R[leaf, M].
        products = np.ones((len(leaves), 1 << players))
        for mask in range(1, 1 << players):
            lowest = (mask & -mask).bit_length() - 1
            products[:, mask] = products[:, mask & (mask - 1)] * zero_fraction[:, lowest]
        table = (products @ _shapley_weights(players)).reshape(len(leaves), 1 << players, players)
        agrees = (np.arange(1 << players)[:, None] >> np.arange(players)[None, :]) & 1  # (pattern, slot)
        value = np.array([leaf.value for leaf in leaves])
        table *= value[:, None, None] * (agrees[None, :, :] - zero_fraction[:, None, :])
        self.table = table.reshape(len(leaves) << players, players)
        self.leaf_row = np.arange(len(leaves)) << players  # a leaf's first table row

        # Each feature's value sums its (leaf, slot) entries: sorted by feature once, then reduceat.
        flat_feature = slot_feature.ravel()
        self.order = np.argsort(flat_feature, kind="stable")
        sorted_feature = flat_feature[self.order]
        self.starts = np.flatnonzero(np.r_[True, sorted_feature[1:] != sorted_feature[:-1]])
        self.summed_features = sorted_feature[self.starts]
        self.real = self.summed_features < n_features  # not the padding's column

    def patterns(self, x: np.ndarray) -> np.ndarray:
        """(rows, leaves): bit k set when the row follows the leaf's path at every node of its player k."""
        goes_left = self.tests.goes_left(x)
        strays = np.take(goes_left, self.element_node, axis=1, mode="clip") != self.element_left
        failed = strays * self.element_bit  # the player's bit where the row leaves the path
        return self.everyone & ~np.bitwise_or.reduce(failed, axis=1)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """(rows, n_features) float64: each feature's SHAP contribution to the margin."""
        out = np.zeros((len(x), self.n_features))
        if self.leaf_count == 0:
            return out
        # Rows go in chunks whose table entries stay in the CPU cache, through buffers allocated once
        # per call: on 1,000 rows about 3× faster than one pass (fresh memory costs page faults).
        step = max(1, CHUNK_ENTRIES // (self.leaf_count * self.players))
        entries = np.empty((min(step, len(x)), self.leaf_count, self.players))
        by_feature = np.empty((len(entries), self.leaf_count * self.players))
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            rows, ordered = entries[:len(chunk)], by_feature[:len(chunk)]
            # np.take, not fancy indexing, and mode="clip" (the indices are valid): no bounds checks
            # and no temporary copies.
            np.take(self.table, self.leaf_row + self.patterns(chunk), axis=0, out=rows, mode="clip")
            np.take(rows.reshape(len(chunk), -1), self.order, axis=1, out=ordered, mode="clip")
            sums = np.add.reduceat(ordered, self.starts, axis=1)
            out[start:start + step, self.summed_features[self.real]] = sums[:, self.real]
        return out


class IsolationForestScorer:
    """``IsolationForest.score_samples`` of a fitted forest: all trees walked at once, level by level
    (scikit-learn's rule: ``value <= threshold`` goes left; a missing value follows the node's
    ``missing_go_to_left``), each leaf's path length as scikit-learn sums it. The nodes are numbered
    across the forest, so that every step is a few flat ``np.take``s."""

    def __init__(self, forest: IsolationForest):
        from sklearn.ensemble._iforest import _average_path_length  # imported when used (core/ml/metrics.py)

        trees = [estimator.tree_ for estimator in forest.estimators_]
        subsampled = forest._max_features != forest.n_features_in_
        feature, threshold, missing_left, children, path_length, roots = [], [], [], [], [], []
        offset = 0
        for i, tree in enumerate(trees):
            nodes = np.arange(tree.node_count)
            leaf = tree.children_left == -1
            features = np.where(leaf, 0, tree.feature)
            feature.append(forest.estimators_features_[i][features] if subsampled else features)
            threshold.append(tree.threshold)
            missing_left.append(tree.missing_go_to_left.astype(bool))
            # children[2n]: left, children[2n + 1]: right; a leaf is its own child, so it stays put.
            children.append(np.column_stack([np.where(leaf, nodes, tree.children_left),
                                             np.where(leaf, nodes, tree.children_right)]).ravel() + offset)
            # What score_samples adds up for a row that ends in this node.
            path_length.append(forest._decision_path_lengths[i] + forest._average_path_length_per_tree[i] - 1.0)
            roots.append(offset)
            offset += tree.node_count
        self.feature = np.concatenate(feature).astype(np.intp)
        self.threshold = np.concatenate(threshold)
        self.missing_left = np.concatenate(missing_left)
        self.children = np.concatenate(children).astype(np.intp)
        self.path_length = np.concatenate(path_length)
        self.roots = np.array(roots, dtype=np.intp)
        self.levels = max(t.max_depth for t in trees)
        self.denominator = len(trees) * _average_path_length([forest._max_samples])[0]

    def score_samples(self, x: np.ndarray) -> np.ndarray:
        """The forest's ``score_samples`` of a float32 matrix (negative; lower is more abnormal)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        row_start = (np.arange(len(x)) * x.shape[1])[:, None]
        flat = x.ravel().astype(np.float64)
        missing = bool(np.isnan(flat).any())
        node = np.broadcast_to(self.roots, (len(x), len(self.roots)))
        for _ in range(self.levels):
            values = np.take(flat, row_start + np.take(self.feature, node))
            goes_right = ~(values <= np.take(self.threshold, node))
            if missing:
                goes_right = np.where(np.isnan(values), ~np.take(self.missing_left, node), goes_right)
            node = np.take(self.children, 2 * node + goes_right)
        # Summed tree by tree, as scikit-learn does, so that the float result is the same.
        depths = np.cumsum(np.take(self.path_length, node), axis=1)[:, -1]
        return -(2 ** (-depths / self.denominator))
