//! The self-check's rows: for each column of a schema, a pool of values that exercise the
//! trees (every factor level; every threshold the trees compare the input with, and the
//! doubles just below and above it; values beyond the outermost thresholds and the largest
//! doubles; a missing value where the algorithm has a missing branch), shuffled, each
//! value used once in the first rows (all of them when there are as many rows as values)
//! and drawn at random after that, from a splitmix64 stream of the seed.

use protocol::{Algorithm, Column, ColumnData, ColumnType, Frame, Schema};

use crate::compile::CATEGORICAL;
use crate::NativeModel;

/// splitmix64 (Steele, Lea, Flood 2014): a small generator, deterministic for its seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One column's candidate values.
enum Pool {
    Numbers(Vec<Option<f64>>, (f64, f64)),
    Integers(Vec<Option<i32>>, (f64, f64)),
    Bools(Vec<Option<bool>>),
    Codes(Vec<String>, Vec<Option<u32>>, bool),
    Strings(Vec<Option<String>>),
}

pub(crate) fn sample(model: &NativeModel, schema: &Schema, n: usize, seed: u64) -> Frame {
    let mut rng = SplitMix64(seed);
    let missing_ok = model.algorithm == Algorithm::Gbm;
    let columns = schema
        .columns
        .iter()
        .map(|spec| {
            let thresholds = thresholds(model, &spec.name);
            let (lo, hi) = match (thresholds.first(), thresholds.last()) {
                (Some(&lo), Some(&hi)) => {
                    let margin = (hi - lo).abs().max(1.0);
                    (lo - margin, hi + margin)
                }
                _ => (-1.0, 1.0),
            };
            let pool = match spec.column_type {
                ColumnType::Numeric => {
                    let mut values: Vec<Option<f64>> =
                        vec![Some(lo), Some(hi), Some(0.0), Some(f64::MIN), Some(f64::MAX)];
                    for &t in &thresholds {
                        values.extend([Some(t), Some(t.next_down()), Some(t.next_up())]);
                    }
                    values.extend(missing(missing_ok));
                    Pool::Numbers(values, (lo, hi))
                }
                ColumnType::Integer => {
                    let clamp = |v: f64| v.clamp(f64::from(i32::MIN + 1), f64::from(i32::MAX)) as i32;
                    let mut values: Vec<Option<i32>> = vec![Some(clamp(lo)), Some(clamp(hi)), Some(0)];
                    for &t in &thresholds {
                        let floor = clamp(t.floor());
                        values.extend([Some(floor.saturating_sub(1)), Some(floor), Some(floor.saturating_add(1))]);
                    }
                    values.extend(missing(missing_ok));
                    Pool::Integers(values, (lo, hi))
                }
                ColumnType::Logical => {
                    Pool::Bools([Some(false), Some(true)].into_iter().chain(missing(missing_ok)).collect())
                }
                ColumnType::Factor | ColumnType::Ordered => {
                    let levels = spec.levels.clone().unwrap_or_default();
                    let codes = (0..levels.len() as u32).map(Some).chain(missing(missing_ok)).collect();
                    Pool::Codes(levels, codes, spec.column_type == ColumnType::Ordered)
                }
                ColumnType::Character => {
                    Pool::Strings(["a", "b"].iter().map(|s| Some(s.to_string())).chain(missing(missing_ok)).collect())
                }
            };
            Column::new(spec.name.clone(), fill(pool, n, &mut rng))
        })
        .collect();
    Frame { n_rows: n, columns }
}

/// A missing value for the pool, where the algorithm has a missing branch.
fn missing<T>(missing_ok: bool) -> Option<Option<T>> {
    missing_ok.then_some(None)
}

/// Every value of the pool once in a shuffled order (while rows last), then draws: from the pool, or for
/// numbers, half the time uniformly between the outermost values.
fn fill(mut pool: Pool, n: usize, rng: &mut SplitMix64) -> ColumnData {
    match &mut pool {
        Pool::Numbers(values, _) => shuffle(values, rng),
        Pool::Integers(values, _) => shuffle(values, rng),
        Pool::Bools(values) => shuffle(values, rng),
        Pool::Codes(_, codes, _) => shuffle(codes, rng),
        Pool::Strings(values) => shuffle(values, rng),
    }
    fn pick<T: Clone>(values: &[T], row: usize, rng: &mut SplitMix64) -> Option<T> {
        match values.len() {
            0 => None,
            len if row < len => Some(values[row].clone()),
            len => Some(values[rng.below(len)].clone()),
        }
    }
    match pool {
        Pool::Numbers(values, (lo, hi)) => ColumnData::F64 {
            values: (0..n)
                .map(|row| {
                    if row >= values.len() && rng.next() & 1 == 1 {
                        Some(lo + (hi - lo) * rng.unit())
                    } else {
                        pick(&values, row, rng).flatten()
                    }
                })
                .collect(),
        },
        Pool::Integers(values, (lo, hi)) => ColumnData::I32 {
            values: (0..n)
                .map(|row| {
                    if row >= values.len() && rng.next() & 1 == 1 {
                        Some((lo + (hi - lo) * rng.unit()).round() as i32)
                    } else {
                        pick(&values, row, rng).flatten()
                    }
                })
                .collect(),
        },
        Pool::Bools(values) => {
            ColumnData::Bool { values: (0..n).map(|row| pick(&values, row, rng).flatten()).collect() }
        }
        Pool::Codes(levels, codes, ordered) => {
            ColumnData::Factor { values: (0..n).map(|row| pick(&codes, row, rng).flatten()).collect(), levels, ordered }
        }
        Pool::Strings(values) => {
            ColumnData::Str { values: (0..n).map(|row| pick(&values, row, rng).flatten()).collect() }
        }
    }
}

/// Fisher–Yates.
fn shuffle<T>(values: &mut [T], rng: &mut SplitMix64) {
    for i in (1..values.len()).rev() {
        values.swap(i, rng.below(i + 1));
    }
}

/// The thresholds the trees compare input `name` with, sorted and without repeats.
fn thresholds(model: &NativeModel, name: &str) -> Vec<f64> {
    let Some(var) = model.inputs.iter().position(|input| input.name == name) else {
        return Vec::new();
    };
    let mut thresholds: Vec<f64> = (model.nodes.iter().zip(&model.values).enumerate())
        .filter(|(k, (node, value))| {
            node.left as usize != *k && node.var() == var && node.word & CATEGORICAL == 0 && value.is_finite()
        })
        .map(|(_, (_, value))| *value)
        .collect();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    thresholds
}
