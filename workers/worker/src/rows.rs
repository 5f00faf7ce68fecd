//! Rows of frames: the frames of a batch concatenated into one, and a frame cut back into
//! row ranges (the parts of a row split, and each request's share of a batch's answer).
//!
//! Only frames with the same columns concatenate: the same names in the same order, the
//! same types and, for factors, the same levels. Frames conformed to a model's schema
//! always agree; frames of a model without a schema may not, and are then not batched.

use std::ops::Range;

use protocol::{Column, ColumnData, Frame};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RowsError {
    #[error("cannot concatenate frames with different columns ({0})")]
    Columns(String),
    #[error("cannot concatenate no frames")]
    Empty,
}

/// Whether `a` and `b` have the same columns (names, order, types, factor levels), so that
/// their rows can be concatenated.
pub fn same_columns(a: &Frame, b: &Frame) -> bool {
    a.columns.len() == b.columns.len() && a.columns.iter().zip(&b.columns).all(|(x, y)| same_column(x, y))
}

fn same_column(a: &Column, b: &Column) -> bool {
    a.name == b.name
        && match (&a.data, &b.data) {
            (ColumnData::F64 { .. }, ColumnData::F64 { .. })
            | (ColumnData::I32 { .. }, ColumnData::I32 { .. })
            | (ColumnData::Bool { .. }, ColumnData::Bool { .. })
            | (ColumnData::Str { .. }, ColumnData::Str { .. }) => true,
            (
                ColumnData::Factor { levels: la, ordered: oa, .. },
                ColumnData::Factor { levels: lb, ordered: ob, .. },
            ) => la == lb && oa == ob,
            _ => false,
        }
}

/// The rows of `frames`, in order, as one frame.
pub fn concat(frames: &[&Frame]) -> Result<Frame, RowsError> {
    let (first, rest) = frames.split_first().ok_or(RowsError::Empty)?;
    if let Some(other) = rest.iter().find(|f| !same_columns(first, f)) {
        let names = |f: &Frame| {
            f.columns.iter().map(|c| format!("{}:{}", c.name, c.data.type_name())).collect::<Vec<_>>().join(", ")
        };
        return Err(RowsError::Columns(format!("{} vs {}", names(first), names(other))));
    }
    let n_rows = frames.iter().map(|f| f.n_rows).sum();
    let columns = first
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let mut data = empty_like(&column.data, n_rows);
            for frame in frames {
                append(&mut data, &frame.columns[i].data, 0..frame.n_rows);
            }
            Column::new(column.name.clone(), data)
        })
        .collect();
    Ok(Frame { n_rows, columns })
}

/// Rows `range` of `frame` (which must lie within it).
pub fn slice(frame: &Frame, range: Range<usize>) -> Frame {
    let columns = frame
        .columns
        .iter()
        .map(|column| {
            let mut data = empty_like(&column.data, range.len());
            append(&mut data, &column.data, range.clone());
            Column::new(column.name.clone(), data)
        })
        .collect();
    Frame { n_rows: range.len(), columns }
}

/// `n_rows` rows cut into `k` contiguous ranges whose lengths differ by at most one, the
/// longer ones first; `k` is clamped to `1..=n_rows` (one empty range for no rows).
pub fn even_ranges(n_rows: usize, k: usize) -> Vec<Range<usize>> {
    let k = k.clamp(1, n_rows.max(1));
    let (base, extra) = (n_rows / k, n_rows % k);
    let mut start = 0;
    (0..k)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// Consecutive ranges of the given lengths: each request's rows within its batch.
pub fn offsets(lengths: impl IntoIterator<Item = usize>) -> Vec<Range<usize>> {
    let mut start = 0;
    lengths
        .into_iter()
        .map(|len| {
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

/// An empty column of `like`'s type (and levels), with room for `capacity` values.
fn empty_like(like: &ColumnData, capacity: usize) -> ColumnData {
    match like {
        ColumnData::F64 { .. } => ColumnData::F64 { values: Vec::with_capacity(capacity) },
        ColumnData::I32 { .. } => ColumnData::I32 { values: Vec::with_capacity(capacity) },
        ColumnData::Bool { .. } => ColumnData::Bool { values: Vec::with_capacity(capacity) },
        ColumnData::Str { .. } => ColumnData::Str { values: Vec::with_capacity(capacity) },
        ColumnData::Factor { levels, ordered, .. } => {
            ColumnData::Factor { levels: levels.clone(), values: Vec::with_capacity(capacity), ordered: *ordered }
        }
    }
}

/// Appends `from[range]` to `to`; both are of the same type (checked by the callers).
fn append(to: &mut ColumnData, from: &ColumnData, range: Range<usize>) {
    match (to, from) {
        (ColumnData::F64 { values: to }, ColumnData::F64 { values: from }) => to.extend_from_slice(&from[range]),
        (ColumnData::I32 { values: to }, ColumnData::I32 { values: from }) => to.extend_from_slice(&from[range]),
        (ColumnData::Bool { values: to }, ColumnData::Bool { values: from }) => to.extend_from_slice(&from[range]),
        (ColumnData::Str { values: to }, ColumnData::Str { values: from }) => to.extend_from_slice(&from[range]),
        (ColumnData::Factor { values: to, .. }, ColumnData::Factor { values: from, .. }) => {
            to.extend_from_slice(&from[range])
        }
        (to, from) => unreachable!("append of a {} column to a {} column", from.type_name(), to.type_name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(rows: &[(f64, &str)]) -> Frame {
        Frame::new(vec![
            Column::new("x", ColumnData::F64 { values: rows.iter().map(|r| Some(r.0)).collect() }),
            Column::new(
                "g",
                ColumnData::Factor {
                    levels: vec!["a".into(), "b".into()],
                    values: rows.iter().map(|r| (r.1 != "NA").then(|| u32::from(r.1 == "b"))).collect(),
                    ordered: false,
                },
            ),
            Column::new("s", ColumnData::Str { values: rows.iter().map(|r| Some(r.1.to_string())).collect() }),
        ])
        .unwrap()
    }

    /// Concatenating `parts` gives `expected`, and cutting the result at the parts'
    /// lengths gives the parts back.
    fn check(parts: &[Frame], expected: Result<Frame, &str>) {
        let refs: Vec<&Frame> = parts.iter().collect();
        match (concat(&refs), expected) {
            (Ok(got), Ok(want)) => {
                assert_eq!(got, want);
                let back: Vec<Frame> =
                    offsets(parts.iter().map(|p| p.n_rows)).into_iter().map(|r| slice(&got, r)).collect();
                assert_eq!(back, parts);
            }
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "{got} does not mention {want}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn concatenate_and_cut_back() {
        check(&[frame(&[(1.0, "a")])], Ok(frame(&[(1.0, "a")])));
        check(
            &[frame(&[(1.0, "a"), (2.0, "NA")]), frame(&[]), frame(&[(3.0, "b")])],
            Ok(frame(&[(1.0, "a"), (2.0, "NA"), (3.0, "b")])),
        );
        let mut other_levels = frame(&[(1.0, "a")]);
        if let ColumnData::Factor { levels, .. } = &mut other_levels.columns[1].data {
            levels.push("c".into());
        }
        check(&[frame(&[(1.0, "a")]), other_levels], Err("different columns"));
        let mut renamed = frame(&[(1.0, "a")]);
        renamed.columns[0].name = "y".into();
        check(&[frame(&[(1.0, "a")]), renamed], Err("y:f64"));
        let mut retyped = frame(&[(1.0, "a")]);
        retyped.columns[0].data = ColumnData::I32 { values: vec![Some(1)] };
        check(&[frame(&[(1.0, "a")]), retyped], Err("x:i32"));
        check(&[], Err("no frames"));
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn even_ranges_cover_the_rows() {
        let check = |n_rows: usize, k: usize, expected: &[Range<usize>]| {
            assert_eq!(even_ranges(n_rows, k), expected, "{n_rows} rows in {k}")
        };
        check(10, 3, &[0..4, 4..7, 7..10]);
        check(4, 2, &[0..2, 2..4]);
        check(2, 5, &[0..1, 1..2]);
        check(5, 0, &[0..5]);
        check(0, 3, &[0..0]);
    }
}
