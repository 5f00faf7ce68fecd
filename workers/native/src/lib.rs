//! The native engine: a [`NativeForest`] extracted from an R model, compiled into a
//! [`NativeModel`] that scores frames exactly as R's `predict` does (the same trees walked
//! with the same comparisons, leaf values summed in the same order, the same arithmetic on
//! the sums), with no R call.
//!
//! **Invariant:** this crate does no I/O and never links R. It reads frames and forests
//! and answers frames; where it could not give R's answer (a missing value where R would
//! refuse or drop the row, a `type` it does not know), it declines and the caller asks R.
//!
//! # Layout
//! - `lib.rs` (this file): the API, and [`NativeModel::predict`]: a frame read into a
//!   row-major matrix of doubles, the trees walked a tree at a time for blocks of rows
//!   (eight rows down a tree in lockstep; a single row goes down eight trees in lockstep)
//!   and each row's leaves accumulated (on rayon's pool from [`PARALLEL_ROWS`] rows on),
//!   then the accumulations turned into R's answer.
//! - `compile`: checking a [`NativeForest`] and flattening its trees into one node array
//!   (breadth first, each split's children side by side: 16 bytes a node that the walk
//!   reads, and 8 beside it for what a leaf answers).
//! - `sample`: the self-check's rows.
//! - [`check`]: the self-check itself, run by the worker and by R hosts alike: those rows
//!   scored by R and natively, compared bit for bit.
//!
//! # Exactness
//! Every row's accumulation starts where R's C code starts (`0.0` for sums and votes,
//! `initF` for gbm) and adds the trees in the model's order; the division by the number of
//! trees, randomForest's `corr.bias` line, the `cutoff` criterion and gbm's inverse links
//! are written as R's packages write them, so that each answer is R's bit for bit. The one
//! place R is not deterministic is a classification vote tie, which R breaks at random:
//! the native label is the first class of the tie, and the row is listed in
//! [`Prediction::ties`].

pub mod check;
mod compile;
mod sample;

pub use check::{compare, Agreement, CheckRows, SELF_CHECK_ROWS, SELF_CHECK_SEED};

use protocol::native::NativeOutput;
use protocol::{Algorithm, Column, ColumnData, Frame, NativeForest, Schema};
use rayon::prelude::*;

/// From this many rows on, rows are scored in parallel on rayon's pool; fewer are scored
/// on the calling thread, where a pool's hand-off would cost more than the trees.
pub const PARALLEL_ROWS: usize = 64;

/// Fewest rows per parallel task (each task's block is walked a tree at a time).
const MIN_ROWS_PER_TASK: usize = 64;

/// Rows per parallel task for a request of `n_rows`: one block per thread of the pool, at
/// least [`MIN_ROWS_PER_TASK`]. A block is walked a tree at a time, so each tree's nodes
/// come into the cache once per block: a forest of megabytes walked over small blocks
/// spends its time in cache misses (64-row blocks made a 10,000-row request of a 500-tree
/// forest ten times slower than R's C loop, which walks all rows through each tree).
fn rows_per_task(n_rows: usize) -> usize {
    n_rows.div_ceil(rayon::current_num_threads().max(1)).max(MIN_ROWS_PER_TASK)
}

/// Rows walked down a tree together (see `NativeModel::walk`).
const LANES: usize = 8;

/// A compiled forest, held once per worker process and shared by every thread.
pub struct NativeModel {
    algorithm: Algorithm,
    inputs: Vec<compile::Input>,
    /// Every tree's nodes, tree after tree; children are indices into this array.
    nodes: Vec<compile::Node>,
    /// Per node: a leaf's value (its class, for a vote) or a split's threshold, as R has it.
    values: Vec<f64>,
    /// Per node: where a slow categorical split's directions start in `sets`, or a
    /// probability leaf's fractions in `distributions`; empty when no node needs it.
    aux: Vec<u32>,
    /// Per node: gbm's branch for a missing value; empty for the other packages.
    missing: Vec<u32>,
    /// Each tree's root in `nodes`, in the model's order.
    roots: Vec<u32>,
    /// Each tree's depth: the steps from its root to its deepest leaf.
    depths: Vec<u32>,
    /// Categorical splits' directions, one run of the input's level count per split.
    sets: Vec<i8>,
    /// ranger probability leaves' class fractions, one run of the class count per leaf.
    distributions: Vec<f64>,
    output: NativeOutput,
}

/// Why a forest cannot be compiled (a malformed extraction: a child out of range, a set
/// index past the sets, inputs and trees that disagree).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct CompileError(pub String);

/// Why the engine leaves a request to R, in words for logs and the 422 of `?engine=native`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Declined(pub String);

/// A native answer: the frame R would have answered, and the rows whose class was a tie of
/// votes (0-based), which R breaks at random, so that R's label there may differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub frame: Frame,
    pub ties: Vec<usize>,
}

/// What a compiled forest holds in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub trees: u32,
    pub nodes: u64,
    pub bytes: u64,
}

/// What R answers for one `type`, once the trees have been accumulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// One double per row (`.pred`).
    Number,
    /// A factor of the classes (`.pred`).
    Label,
    /// One double column per class.
    PerClass,
}

impl NativeModel {
    /// Checks and compiles an extracted forest.
    pub fn compile(forest: &NativeForest) -> Result<NativeModel, CompileError> {
        compile::compile(forest)
    }

    /// The `type`s answered natively (`response`, `prob`, `vote`, `class`, `link`), the
    /// model's default (`None`) resolved by the caller first.
    pub fn types(&self) -> &[&'static str] {
        match self.output {
            NativeOutput::Mean { .. } | NativeOutput::Majority { .. } | NativeOutput::Distribution { .. } => {
                &["response"]
            }
            NativeOutput::Votes { .. } => &["response", "class", "prob", "vote"],
            NativeOutput::Boosted { .. } => &["link", "response"],
        }
    }

    /// Scores `frame` (conformed to the model's schema) for `predict_type` as R would:
    /// one row on the calling thread, many in parallel on rayon's pool. `None` is what
    /// `predict` answers without a `type`: `"response"`, and `"link"` for gbm.
    pub fn predict(&self, frame: &Frame, predict_type: Option<&str>) -> Result<Prediction, Declined> {
        let answer = self.answer(predict_type)?;
        let x = self.matrix(frame)?;
        let width = self.accumulator_width();
        // A forest without inputs (a stump) still has one accumulation per row.
        let row_len = self.inputs.len().max(1);
        let mut acc = vec![0.0; frame.n_rows * width];
        let score = |(x_rows, acc_rows): (&[f64], &mut [f64])| {
            if self.algorithm == Algorithm::Gbm {
                self.accumulate::<true>(x_rows, row_len, acc_rows)
            } else {
                self.accumulate::<false>(x_rows, row_len, acc_rows)
            }
        };
        if frame.n_rows >= PARALLEL_ROWS {
            let rows = rows_per_task(frame.n_rows);
            x.par_chunks(row_len * rows).zip(acc.par_chunks_mut(width * rows)).for_each(score);
        } else {
            score((&x, &mut acc));
        }
        Ok(self.assemble(&acc, frame.n_rows, answer, predict_type))
    }

    pub fn footprint(&self) -> Footprint {
        let bytes = self.nodes.len() * std::mem::size_of::<compile::Node>()
            + self.values.len() * std::mem::size_of::<f64>()
            + (self.aux.len() + self.missing.len() + self.roots.len() + self.depths.len()) * std::mem::size_of::<u32>()
            + self.sets.len()
            + self.distributions.len() * std::mem::size_of::<f64>()
            + self.inputs.iter().map(compile::Input::bytes).sum::<usize>();
        Footprint { trees: self.roots.len() as u32, nodes: self.nodes.len() as u64, bytes: bytes as u64 }
    }

    /// `n` rows for the self-check, conforming to `schema`, deterministic for `seed`: every
    /// factor level, the values at and just around every threshold the trees compare an
    /// input with, extremes, and missing values where the algorithm handles them (gbm).
    pub fn sample(&self, schema: &Schema, n: usize, seed: u64) -> Frame {
        sample::sample(self, schema, n, seed)
    }

    /// What `predict_type` answers, or why it is left to R.
    fn answer(&self, predict_type: Option<&str>) -> Result<Answer, Declined> {
        let answer = match (&self.output, predict_type) {
            (NativeOutput::Mean { .. } | NativeOutput::Boosted { .. }, None | Some("response")) => Answer::Number,
            (NativeOutput::Boosted { .. }, Some("link")) => Answer::Number,
            (NativeOutput::Votes { .. }, None | Some("response" | "class")) => Answer::Label,
            (NativeOutput::Votes { .. }, Some("prob" | "vote")) => Answer::PerClass,
            (NativeOutput::Majority { .. }, None | Some("response")) => Answer::Label,
            (NativeOutput::Distribution { .. }, None | Some("response")) => Answer::PerClass,
            (_, Some(other)) => {
                return Err(Declined(format!(
                    "type '{other}' is not answered natively for a {} model (native types: {})",
                    self.algorithm.package(),
                    self.types().join(", ")
                )))
            }
        };
        Ok(answer)
    }

    /// How many doubles one row accumulates: one sum, or one per class.
    fn accumulator_width(&self) -> usize {
        match &self.output {
            NativeOutput::Mean { .. } | NativeOutput::Boosted { .. } => 1,
            NativeOutput::Votes { classes, .. }
            | NativeOutput::Majority { classes }
            | NativeOutput::Distribution { classes } => classes.len(),
        }
    }

    /// The frame's inputs as a row-major matrix of the numbers R's C code compares: a
    /// number as is, a factor's code (for a categorical split's directions, the code
    /// 0.. as a double's bits; else the code counted from the input's `code_base`), NaN
    /// for a missing value where the algorithm has a missing branch; otherwise a missing
    /// value declines.
    fn matrix(&self, frame: &Frame) -> Result<Vec<f64>, Declined> {
        let row_len = self.inputs.len().max(1);
        let mut x = vec![0.0; frame.n_rows * row_len];
        let missing_ok = self.algorithm == Algorithm::Gbm;
        for (j, input) in self.inputs.iter().enumerate() {
            let column = frame
                .column(&input.name)
                .ok_or_else(|| Declined(format!("the frame has no column '{}'", input.name)))?;
            let values = input.read(column, missing_ok)?;
            for (row, value) in values.into_iter().enumerate() {
                x[row * row_len + j] = value;
            }
        }
        Ok(x)
    }

    /// Walks every tree for a block of rows (`x`, `row_len` values a row) and adds each
    /// row's leaf into its accumulation in `acc`, trees in order. Rows that may hold NaN
    /// are `MISSING` (gbm's); the other packages' never do (a missing value declines).
    ///
    /// A block of at least [`LANES`] rows is walked a tree at a time, [`LANES`] rows down
    /// it in lockstep, so that one tree's nodes stay in cache across the block's rows.
    /// Fewer rows (a single-row request) are walked a row at a time, [`LANES`] trees down
    /// in lockstep: a row's path through a forest larger than the cache waits on memory at
    /// every step, and independent walks overlap those waits. Either way each row's
    /// accumulation adds the trees in the model's order.
    fn accumulate<const MISSING: bool>(&self, x: &[f64], row_len: usize, acc: &mut [f64]) {
        let width = self.accumulator_width();
        if let NativeOutput::Boosted { init, .. } = &self.output {
            acc.fill(*init);
        }
        let n_rows = x.len() / row_len;
        if n_rows < LANES {
            for (x, acc) in x.chunks_exact(row_len).zip(acc.chunks_exact_mut(width)) {
                for (roots, depths) in self.roots.chunks(LANES).zip(self.depths.chunks(LANES)) {
                    let mut k = [0u32; LANES];
                    let k = &mut k[..roots.len()];
                    k.copy_from_slice(roots);
                    self.lockstep::<MISSING>(k, depths.iter().copied().max().unwrap_or(0), x, 0);
                    for &leaf in k.iter() {
                        self.add(acc, leaf);
                    }
                }
            }
            return;
        }
        let mut leaves = vec![0u32; n_rows];
        for (&root, &depth) in self.roots.iter().zip(&self.depths) {
            leaves.fill(root);
            for (x, leaves) in x.chunks(row_len * LANES).zip(leaves.chunks_mut(LANES)) {
                self.lockstep::<MISSING>(leaves, depth, x, row_len);
            }
            for (acc, &leaf) in acc.chunks_exact_mut(width).zip(&leaves) {
                self.add(acc, leaf);
            }
        }
    }

    /// Adds the leaf `leaf` into one row's accumulation.
    #[inline(always)]
    fn add(&self, acc: &mut [f64], leaf: u32) {
        let value = self.values[leaf as usize];
        match &self.output {
            NativeOutput::Mean { .. } | NativeOutput::Boosted { .. } => acc[0] += value,
            // Compiling checked that every leaf names a class 1..=classes.
            NativeOutput::Votes { .. } | NativeOutput::Majority { .. } => acc[value as usize - 1] += 1.0,
            NativeOutput::Distribution { .. } => {
                let at = self.aux[leaf as usize] as usize;
                for (sum, fraction) in acc.iter_mut().zip(&self.distributions[at..]) {
                    *sum += fraction;
                }
            }
        }
    }

    /// Walks (at most [`LANES`]) independent walks in lockstep from the nodes in `k` to
    /// their leaves, lane `i` reading the row at `x[i * stride..]`, until none of them moves: a leaf
    /// steps onto itself, so that a walk that has arrived needs no branch of its own;
    /// `depth` bounds the steps. The walks are independent, so the processor overlaps
    /// their node loads instead of waiting on one walk's chain of them.
    #[inline(always)]
    fn lockstep<const MISSING: bool>(&self, k: &mut [u32], depth: u32, x: &[f64], stride: usize) {
        for _ in 0..depth {
            let mut moved = false;
            for (lane, k) in k.iter_mut().enumerate() {
                let next = self.step::<MISSING>(*k, x, lane * stride);
                moved |= next != *k;
                *k = next;
            }
            if !moved {
                break;
            }
        }
    }

    /// Where the row at `x[row..]` goes from node `k`: the same arithmetic for every kind
    /// of node (see [`compile::Node`]), a branch only for the slow splits and gbm's
    /// missing values.
    #[inline(always)]
    fn step<const MISSING: bool>(&self, k: u32, x: &[f64], row: usize) -> u32 {
        let node = self.nodes[k as usize];
        let x = x[row + node.var()];
        if node.word & compile::SLOW != 0 || (MISSING && x.is_nan()) {
            return self.slow_child(k, x);
        }
        // Not `x > threshold`: a NaN threshold sends every row right, as R's `<=` does.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let numeric_right = !(x <= f64::from_bits(node.bits));
        // A categorical input's value holds its level's code (0..64 here) as its bits.
        let categorical_right = (node.bits >> (x.to_bits() & 63)) & 1 == 1;
        let right = if node.word & compile::CATEGORICAL != 0 { categorical_right } else { numeric_right };
        node.left + u32::from(right)
    }

    /// The child of a slow split (see [`compile::SLOW`]), or of gbm's missing branch (only
    /// gbm's rows hold NaN: a missing value, a level the model lacks); a leaf stays.
    #[cold]
    fn slow_child(&self, k: u32, x: f64) -> u32 {
        let node = self.nodes[k as usize];
        if node.left == k {
            return k;
        }
        if x.is_nan() {
            return self.missing[k as usize];
        }
        if node.word & compile::CATEGORICAL != 0 {
            match self.sets[self.aux[k as usize] as usize + x.to_bits() as usize] {
                -1 => node.left,
                1 => node.left + 1,
                _ => self.missing[k as usize],
            }
        } else {
            node.left + u32::from(!self.algorithm.numeric_left(x, self.values[k as usize]))
        }
    }

    /// R's answer from the rows' accumulations.
    fn assemble(&self, acc: &[f64], n_rows: usize, answer: Answer, predict_type: Option<&str>) -> Prediction {
        let n_trees = self.roots.len() as f64;
        let mut ties = Vec::new();
        let number = |values: Vec<f64>| Column::new(".pred", f64_column(values));
        let columns = match (&self.output, answer) {
            (NativeOutput::Mean { bias }, _) => vec![number(
                acc.iter()
                    .map(|&sum| {
                        let mean = sum / n_trees;
                        match bias {
                            Some([a, b]) => a + b * mean,
                            None => mean,
                        }
                    })
                    .collect(),
            )],
            (NativeOutput::Boosted { distribution, .. }, _) => {
                let response = predict_type == Some("response");
                vec![number(acc.iter().map(|&f| if response { inverse_link(distribution, f) } else { f }).collect())]
            }
            (NativeOutput::Votes { classes, cutoff }, Answer::Label) => {
                let labels = acc
                    .chunks_exact(classes.len())
                    .enumerate()
                    .map(|(row, votes)| {
                        // randomForest's `(countts / ntree) / cutoff`, largest first.
                        let crit = votes.iter().zip(cutoff).map(|(v, c)| (v / n_trees) / c);
                        let (label, tie) = first_max(crit);
                        if tie {
                            ties.push(row);
                        }
                        label
                    })
                    .collect();
                vec![label_column(classes, labels)]
            }
            (NativeOutput::Majority { classes }, _) => {
                let labels = acc
                    .chunks_exact(classes.len())
                    .enumerate()
                    .map(|(row, votes)| {
                        let (label, tie) = first_max(votes.iter().copied());
                        if tie {
                            ties.push(row);
                        }
                        label
                    })
                    .collect();
                vec![label_column(classes, labels)]
            }
            (NativeOutput::Votes { classes, .. } | NativeOutput::Distribution { classes }, _) => {
                // randomForest's normalized votes divide by the row's total, which is the
                // number of trees (every tree votes once); ranger divides its sums by it.
                let width = classes.len();
                classes
                    .iter()
                    .enumerate()
                    .map(|(j, class)| {
                        let values = (0..n_rows).map(|row| acc[row * width + j] / n_trees).collect();
                        Column::new(class.clone(), f64_column(values))
                    })
                    .collect()
            }
        };
        Prediction { frame: Frame { n_rows, columns }, ties }
    }
}

/// gbm's `type = "response"` for one link value, as `predict.gbm` computes it.
fn inverse_link(distribution: &str, f: f64) -> f64 {
    match distribution {
        "bernoulli" => 1.0 / (1.0 + (-f).exp()),
        "poisson" => f.exp(),
        _ => f,
    }
}

/// The index of the first largest value, and whether another value equals it.
fn first_max(values: impl Iterator<Item = f64>) -> (u32, bool) {
    let (mut best, mut max, mut tie) = (0u32, f64::NEG_INFINITY, false);
    for (j, value) in values.enumerate() {
        if value > max {
            (best, max, tie) = (j as u32, value, false);
        } else if value == max {
            tie = true;
        }
    }
    (best, tie)
}

/// A double column; NaN becomes missing, as R's answers become frames.
fn f64_column(values: Vec<f64>) -> ColumnData {
    ColumnData::F64 { values: values.into_iter().map(|v| (!v.is_nan()).then_some(v)).collect() }
}

fn label_column(classes: &[String], labels: Vec<u32>) -> Column {
    Column::new(
        ".pred",
        ColumnData::Factor { levels: classes.to_vec(), values: labels.into_iter().map(Some).collect(), ordered: false },
    )
}

#[cfg(test)]
mod tests;
