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
//!   row-major matrix of doubles, each row's trees walked and accumulated (on rayon's pool
//!   from [`PARALLEL_ROWS`] rows on), then the accumulations turned into R's answer.
//! - `compile`: checking a [`NativeForest`] and flattening its trees into one node array.
//! - `sample`: the self-check's rows.
//!
//! # Exactness
//! Every row's accumulation starts where R's C code starts (`0.0` for sums and votes,
//! `initF` for gbm) and adds the trees in the model's order; the division by the number of
//! trees, randomForest's `corr.bias` line, the `cutoff` criterion and gbm's inverse links
//! are written as R's packages write them, so that each answer is R's bit for bit. The one
//! place R is not deterministic is a classification vote tie, which R breaks at random:
//! the native label is the first class of the tie, and the row is listed in
//! [`Prediction::ties`].

mod compile;
mod sample;

use protocol::native::NativeOutput;
use protocol::{Algorithm, Column, ColumnData, Frame, NativeForest, Schema};
use rayon::prelude::*;

/// From this many rows on, rows are scored in parallel on rayon's pool; fewer are scored
/// on the calling thread, where a pool's hand-off would cost more than the trees.
pub const PARALLEL_ROWS: usize = 64;

/// Rows per parallel task: enough trees walked per task to outweigh its scheduling.
const ROWS_PER_TASK: usize = 32;

/// A compiled forest, held once per worker process and shared by every thread.
pub struct NativeModel {
    algorithm: Algorithm,
    inputs: Vec<compile::Input>,
    /// Every tree's nodes, tree after tree; children are indices into this array.
    nodes: Vec<compile::Node>,
    /// Each tree's root in `nodes`, in the model's order.
    roots: Vec<u32>,
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
        let n_inputs = self.inputs.len();
        let mut acc = vec![0.0; frame.n_rows * width];
        let score = |(x_rows, acc_rows): (&[f64], &mut [f64])| {
            for (row, acc_row) in x_rows.chunks_exact(n_inputs.max(1)).zip(acc_rows.chunks_exact_mut(width)) {
                self.accumulate(row, acc_row);
            }
        };
        // A forest without inputs (a stump) still has one accumulation per row.
        let row_len = n_inputs.max(1);
        if frame.n_rows >= PARALLEL_ROWS {
            x.par_chunks(row_len * ROWS_PER_TASK).zip(acc.par_chunks_mut(width * ROWS_PER_TASK)).for_each(score);
        } else {
            score((&x, &mut acc));
        }
        Ok(self.assemble(&acc, frame.n_rows, answer, predict_type))
    }

    pub fn footprint(&self) -> Footprint {
        let bytes = self.nodes.len() * std::mem::size_of::<compile::Node>()
            + self.roots.len() * std::mem::size_of::<u32>()
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
    /// number as is, a factor's code (0-based for a categorical split's directions, else
    /// counted from the input's `code_base`), NaN for a missing value where the algorithm
    /// has a missing branch; otherwise a missing value declines.
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

    /// Walks every tree for one row and adds its leaf into `acc`, trees in order.
    fn accumulate(&self, row: &[f64], acc: &mut [f64]) {
        match &self.output {
            NativeOutput::Mean { .. } => {
                let mut sum = 0.0;
                for &root in &self.roots {
                    sum += self.nodes[self.leaf(root, row)].value;
                }
                acc[0] = sum;
            }
            NativeOutput::Boosted { init, .. } => {
                let mut f = *init;
                for &root in &self.roots {
                    f += self.nodes[self.leaf(root, row)].value;
                }
                acc[0] = f;
            }
            NativeOutput::Votes { .. } | NativeOutput::Majority { .. } => {
                for &root in &self.roots {
                    // Compiling checked that every leaf names a class 1..=classes.
                    let class = self.nodes[self.leaf(root, row)].value as usize;
                    acc[class - 1] += 1.0;
                }
            }
            NativeOutput::Distribution { .. } => {
                let width = acc.len();
                for &root in &self.roots {
                    let at = self.nodes[self.leaf(root, row)].aux as usize;
                    for (sum, fraction) in acc.iter_mut().zip(&self.distributions[at..at + width]) {
                        *sum += fraction;
                    }
                }
            }
        }
    }

    /// The leaf one row reaches from `root`.
    fn leaf(&self, root: u32, row: &[f64]) -> usize {
        let mut k = root as usize;
        loop {
            let node = &self.nodes[k];
            if node.var == compile::LEAF {
                return k;
            }
            let x = row[node.var as usize];
            k = if x.is_nan() {
                // Only gbm's rows hold NaN (a missing value, a level the model lacks).
                node.missing
            } else if node.categorical {
                match self.sets[node.aux as usize + x as usize] {
                    -1 => node.left,
                    1 => node.right,
                    _ => node.missing,
                }
            } else if self.algorithm.numeric_left(x, node.value) {
                node.left
            } else {
                node.right
            } as usize;
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
