//! Checking an extracted forest and flattening it: every tree's nodes in one array with
//! absolute child indices, categorical directions and leaf distributions in runs of their
//! own, and each input's reader of frame columns.
//!
//! Everything the walk relies on is checked here once, so that scoring indexes without
//! failing: children point forward within their tree (so every walk ends at a leaf) and
//! each node has one parent, split variables and set indices are in range, sets have a
//! direction per level, classification leaves name a class and probability leaves have a
//! fraction per class. Each tree is then laid out breadth first with every split's two
//! children side by side (nodes no split reaches are left out).

use std::collections::HashMap;

use protocol::native::{NativeInput, NativeOutput, NativeTree, NATIVE_FORMAT};
use protocol::{Algorithm, Column, ColumnData, NativeForest};

use crate::{CompileError, Declined, NativeModel};

/// [`Parsed::var`] of a leaf.
const LEAF: u32 = u32::MAX;

/// [`Node::word`]'s flag of a categorical split (its `bits` are the levels that go right)
/// and of a leaf (its `bits` are 0 and its `left` is itself, so that it goes nowhere).
pub(crate) const CATEGORICAL: u32 = 1 << 31;
/// [`Node::word`]'s flag of a split the walk cannot take by its bits (see
/// `NativeModel::slow_child`): a categorical split of more than 64 levels or with a level
/// that has no direction, a gbm threshold of minus infinity.
pub(crate) const SLOW: u32 = 1 << 30;
/// [`Node::word`]'s bits that name the input.
pub(crate) const VAR: u32 = SLOW - 1;

/// One node of the flattened forest, 16 bytes: what the walk reads at every step. What a
/// leaf answers and what the rare splits need are in the model's arrays beside `nodes`.
///
/// Every node is a step `left + right?`, the same arithmetic for each kind, so that rows
/// go down a tree in lockstep without branches:
/// - a numeric split: `right` when the input is not `<=` the threshold in `bits` (for gbm,
///   whose `predict` goes left on `<`, the largest double below its threshold: `x < t` is
///   `x <= next_down(t)` for every number);
/// - a categorical split ([`CATEGORICAL`]): `right` when the level's bit is set in `bits`;
/// - a leaf: a categorical split with no bit set whose left child is itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node {
    /// The input (0 for a leaf), with the [`CATEGORICAL`] and [`SLOW`] flags.
    pub word: u32,
    /// The left child; the right child is always the next node (`left + 1`).
    pub left: u32,
    /// A numeric split's threshold (`f64` bits) or a categorical split's mask of levels.
    pub bits: u64,
}

impl Node {
    pub fn var(self) -> usize {
        (self.word & VAR) as usize
    }
}

/// A node as the extraction gives it, before the layout.
#[derive(Debug, Clone, Copy)]
struct Parsed {
    /// The input it splits on, or [`LEAF`].
    var: u32,
    categorical: bool,
    left: u32,
    right: u32,
    /// gbm's branch for a missing value (and a level without direction); unused elsewhere.
    missing: u32,
    /// A numeric split's threshold, or a leaf's value.
    value: f64,
    /// A categorical split's first direction in the sets, or a probability leaf's first
    /// fraction in the distributions.
    aux: u32,
}

/// One input: how a frame's column becomes the numbers the trees compare.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub name: String,
    /// For a factor, the model's code (0-based) of each level name.
    levels: Option<HashMap<String, u32>>,
    pub n_levels: usize,
    categorical: bool,
    code_base: u32,
}

impl Input {
    fn new(input: &NativeInput) -> Result<Input, CompileError> {
        if input.categorical && input.levels.is_none() {
            return Err(CompileError(format!("input '{}' is categorical but has no levels", input.name)));
        }
        let levels = input.levels.as_ref().map(|levels| {
            levels.iter().enumerate().map(|(code, level)| (level.clone(), code as u32)).collect::<HashMap<_, _>>()
        });
        if let (Some(map), Some(levels)) = (&levels, &input.levels) {
            if map.len() != levels.len() {
                return Err(CompileError(format!("input '{}' lists a level twice", input.name)));
            }
        }
        Ok(Input {
            name: input.name.clone(),
            n_levels: input.levels.as_ref().map_or(0, Vec::len),
            levels,
            categorical: input.categorical,
            code_base: input.code_base,
        })
    }

    /// Bytes held beyond the struct: the level names and their map.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Input>()
            + self.name.len()
            + self.levels.as_ref().map_or(0, |levels| {
                levels.keys().map(|level| level.len() + std::mem::size_of::<(String, u32)>()).sum::<usize>()
            })
    }

    /// The column's values as the trees compare them (see [`NativeModel`]'s `matrix`).
    pub fn read(&self, column: &Column, missing_ok: bool) -> Result<Vec<f64>, Declined> {
        let name = &self.name;
        let missing = |row: usize| {
            if missing_ok {
                Ok(f64::NAN)
            } else {
                Err(Declined(format!(
                    "column '{name}' has a missing value in row {} (R drops or refuses such rows)",
                    row + 1
                )))
            }
        };
        let numbers = |values: &mut dyn Iterator<Item = Option<f64>>| -> Result<Vec<f64>, Declined> {
            values
                .enumerate()
                .map(|(row, value)| match value {
                    // R tells NaN apart from NA (gbm's ISNA is false for NaN); frames hold
                    // no NaN that R made, so one here is left to R.
                    Some(v) if v.is_nan() => Err(Declined(format!("column '{name}' holds NaN in row {}", row + 1))),
                    Some(v) => Ok(v),
                    None => missing(row),
                })
                .collect()
        };
        match (&self.levels, &column.data) {
            (None, ColumnData::F64 { values }) => numbers(&mut values.iter().copied()),
            (None, ColumnData::I32 { values }) => numbers(&mut values.iter().map(|v| v.map(f64::from))),
            (None, ColumnData::Bool { values }) => {
                numbers(&mut values.iter().map(|v| v.map(|b| f64::from(u8::from(b)))))
            }
            (Some(codes), ColumnData::Factor { levels, values, .. }) => {
                // The frame's levels mapped to the model's codes by name.
                let to_model: Vec<Option<u32>> = levels.iter().map(|level| codes.get(level).copied()).collect();
                // A categorical split reads a level by its bits (see `NativeModel::step`):
                // the code 0.. as the bits of a double (never a NaN); any other split reads
                // the code counted from `code_base` as a number, as R's C code does.
                let value = |code: u32| {
                    if self.categorical {
                        f64::from_bits(u64::from(code))
                    } else {
                        f64::from(code) + f64::from(self.code_base)
                    }
                };
                values
                    .iter()
                    .enumerate()
                    .map(|(row, code)| match code.map(|c| to_model.get(c as usize).copied().flatten()) {
                        Some(Some(code)) => Ok(value(code)),
                        // A level the model does not know: gbm makes it NA, the others refuse.
                        Some(None) if missing_ok => Ok(f64::NAN),
                        Some(None) => Err(Declined(format!(
                            "column '{name}' has a level the model does not know in row {}",
                            row + 1
                        ))),
                        None => missing(row),
                    })
                    .collect()
            }
            (levels, data) => Err(Declined(format!(
                "column '{name}' is {}, the model reads it as {}",
                data.type_name(),
                if levels.is_some() { "a factor" } else { "a number" }
            ))),
        }
    }
}

pub(crate) fn compile(forest: &NativeForest) -> Result<NativeModel, CompileError> {
    let fail = |message: String| Err(CompileError(message));
    if forest.format != NATIVE_FORMAT {
        return fail(format!("the forest is of format {}, this engine reads format {NATIVE_FORMAT}", forest.format));
    }
    if forest.trees.is_empty() {
        return fail("the forest has no trees".into());
    }
    let algorithm = forest.algorithm;
    let n_classes = match (&forest.output, algorithm) {
        (NativeOutput::Mean { .. }, Algorithm::RandomForest | Algorithm::Ranger) => 0,
        (NativeOutput::Boosted { distribution, .. }, Algorithm::Gbm) => {
            if !["gaussian", "bernoulli", "poisson"].contains(&distribution.as_str()) {
                return fail(format!("gbm distribution '{distribution}' is not one the engine answers"));
            }
            0
        }
        (NativeOutput::Votes { classes, cutoff }, Algorithm::RandomForest) => {
            if cutoff.len() != classes.len()
                || cutoff.iter().any(|c| c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
            {
                return fail(format!(
                    "{} cutoffs for {} classes, or a cutoff that is not positive",
                    cutoff.len(),
                    classes.len()
                ));
            }
            classes.len()
        }
        (NativeOutput::Majority { classes } | NativeOutput::Distribution { classes }, Algorithm::Ranger) => {
            classes.len()
        }
        (output, algorithm) => {
            return fail(format!("a {} forest does not answer as {output:?}", algorithm.package()));
        }
    };
    let classes_needed = !matches!(forest.output, NativeOutput::Mean { .. } | NativeOutput::Boosted { .. });
    if classes_needed && n_classes == 0 {
        return fail("a classification forest without classes".into());
    }
    let inputs = forest.inputs.iter().map(Input::new).collect::<Result<Vec<_>, _>>()?;
    let mut model = NativeModel {
        algorithm,
        inputs,
        nodes: Vec::new(),
        values: Vec::new(),
        aux: Vec::new(),
        missing: Vec::new(),
        roots: Vec::with_capacity(forest.trees.len()),
        depths: Vec::with_capacity(forest.trees.len()),
        sets: Vec::new(),
        distributions: Vec::new(),
        output: forest.output.clone(),
    };
    for (t, tree) in forest.trees.iter().enumerate() {
        add_tree(&mut model, tree, n_classes).map_err(|e| CompileError(format!("tree {}: {e}", t + 1)))?;
    }
    // `aux` is read by slow splits and probability leaves only.
    let probability = matches!(model.output, NativeOutput::Distribution { .. });
    if !probability && !model.nodes.iter().any(|node| node.word & SLOW != 0 && node.word & CATEGORICAL != 0) {
        model.aux = Vec::new();
    }
    Ok(model)
}

fn add_tree(model: &mut NativeModel, tree: &NativeTree, n_classes: usize) -> Result<(), String> {
    let n = tree.var.len();
    if n == 0 {
        return Err("no nodes".into());
    }
    for (what, len) in [
        ("split", tree.split.len()),
        ("left", tree.left.len()),
        ("right", tree.right.len()),
        ("value", tree.value.len()),
    ] {
        if len != n {
            return Err(format!("{n} nodes but {len} {what} values"));
        }
    }
    let gbm = model.algorithm == Algorithm::Gbm;
    if gbm && tree.missing.len() != n {
        return Err(format!("{n} nodes but {} missing branches (gbm has one per node)", tree.missing.len()));
    }
    let probability = matches!(model.output, NativeOutput::Distribution { .. });
    if probability && tree.distribution.len() != n {
        return Err(format!("{n} nodes but {} leaf distributions", tree.distribution.len()));
    }
    let base = u32::try_from(model.nodes.len()).map_err(|_| "too many nodes")?;
    if u32::try_from(model.nodes.len() + n).is_err() {
        return Err("too many nodes".into());
    }
    // The nodes in the extraction's order, children as its indices.
    let mut local = Vec::with_capacity(n);
    for k in 0..n {
        let var = tree.var[k];
        let mut node =
            Parsed { var: LEAF, categorical: false, left: 0, right: 0, missing: 0, value: tree.value[k], aux: 0 };
        if var >= 0 {
            let input = model
                .inputs
                .get(var as usize)
                .ok_or_else(|| format!("node {k} splits on input {var} of {}", model.inputs.len()))?;
            if var as u32 > VAR {
                return Err(format!("node {k} splits on input {var}"));
            }
            // A child after its parent: every walk moves forward and ends at a leaf.
            let child = |c: u32, what: &str| {
                if (c as usize) > k && (c as usize) < n {
                    Ok(c)
                } else {
                    Err(format!("node {k}'s {what} child {c} is out of range (nodes {}..{n})", k + 1))
                }
            };
            node.var = var as u32;
            node.left = child(tree.left[k], "left")?;
            node.right = child(tree.right[k], "right")?;
            if gbm {
                node.missing = child(tree.missing[k], "missing")?;
            }
            node.categorical = input.categorical;
            if input.categorical {
                let index = tree.split[k];
                let set = (index >= 0.0 && index.fract() == 0.0)
                    .then(|| tree.sets.get(index as usize))
                    .flatten()
                    .ok_or_else(|| {
                        format!("node {k}'s set {index} is not one of the tree's {} sets", tree.sets.len())
                    })?;
                if set.len() != input.n_levels {
                    return Err(format!(
                        "node {k}'s set has {} directions for the {} levels of '{}'",
                        set.len(),
                        input.n_levels,
                        input.name
                    ));
                }
                if set.iter().any(|d| !matches!(d, -1..=1) || (*d == 0 && !gbm)) {
                    return Err(format!("node {k}'s set has a direction other than left or right"));
                }
                node.aux = u32::try_from(model.sets.len()).map_err(|_| "too many set directions")?;
                model.sets.extend_from_slice(set);
            } else {
                node.value = tree.split[k];
            }
        } else if var == -1 {
            if n_classes > 0 && !probability {
                let class = node.value;
                if !(class >= 1.0 && class <= n_classes as f64 && class.fract() == 0.0) {
                    return Err(format!("leaf {k} names class {class} of {n_classes}"));
                }
            }
            if probability {
                let fractions = &tree.distribution[k];
                if fractions.len() != n_classes {
                    return Err(format!("leaf {k} has {} class fractions for {n_classes} classes", fractions.len()));
                }
                node.aux = u32::try_from(model.distributions.len()).map_err(|_| "too many class fractions")?;
                model.distributions.extend_from_slice(fractions);
            }
        } else {
            return Err(format!("node {k} splits on input {var}"));
        }
        local.push(node);
    }
    // Breadth first from the root: `order` lists the nodes in their new places, `place`
    // maps the extraction's indices to them, `depth` is each node's.
    let mut place = vec![u32::MAX; n];
    let mut depth = vec![0u32; n];
    let mut order = vec![0usize];
    place[0] = 0;
    let mut next = 0;
    while let Some(&k) = order.get(next) {
        next += 1;
        let node = &local[k];
        if node.var == LEAF {
            continue;
        }
        for c in [node.left, node.right].into_iter().chain(gbm.then_some(node.missing)) {
            if place[c as usize] != u32::MAX {
                return Err(format!("node {c} is the child of two splits"));
            }
            place[c as usize] = order.len() as u32;
            depth[c as usize] = depth[k] + 1;
            order.push(c as usize);
        }
    }
    model.roots.push(base);
    model.depths.push(order.iter().map(|&k| depth[k]).max().unwrap_or(0));
    for k in order {
        let parsed = local[k];
        let at = model.nodes.len() as u32;
        let node = if parsed.var == LEAF {
            Node { word: CATEGORICAL, left: at, bits: 0 }
        } else {
            let mut word = parsed.var;
            let bits = if parsed.categorical {
                word |= CATEGORICAL;
                let levels = model.inputs[parsed.var as usize].n_levels;
                let set = &model.sets[parsed.aux as usize..][..levels];
                if set.len() > 64 || set.contains(&0) {
                    word |= SLOW;
                    0
                } else {
                    set.iter().enumerate().filter(|(_, d)| **d == 1).fold(0u64, |mask, (level, _)| mask | 1 << level)
                }
            } else if gbm {
                if parsed.value == f64::NEG_INFINITY {
                    word |= SLOW;
                }
                parsed.value.next_down().to_bits()
            } else {
                parsed.value.to_bits()
            };
            Node { word, left: base + place[parsed.left as usize], bits }
        };
        model.nodes.push(node);
        model.values.push(parsed.value);
        model.aux.push(parsed.aux);
        if gbm {
            model.missing.push(if parsed.var == LEAF { 0 } else { base + place[parsed.missing as usize] });
        }
    }
    Ok(())
}
