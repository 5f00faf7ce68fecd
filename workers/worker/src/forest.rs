//! Forest splitting: a random forest's trees cut into ranges scored on several hosts
//! ([`ToHost::ScoreTrees`](protocol::host::ToHost)), and the parts combined into exactly
//! the frame the whole forest answers.
//!
//! - Regression: the forest's answer is the mean over its trees, so parts combine as the
//!   tree-weighted mean `Σ nᵢ·meanᵢ / Σ nᵢ`; a row is missing when any part says so (R
//!   answers `NA` for rows with missing predictors).
//! - Classification: parts count votes per class, and counts add up. Probabilities (`prob`
//!   and `vote`, as randomForest normalises them) are `votes / total votes` per row, one
//!   `f64` column per class named by the class, as R's matrix columns are. Labels are a
//!   factor `.pred` whose levels are the classes; the label is the class with the most
//!   votes, and a tie goes to the first of the tied classes in level order. randomForest
//!   breaks ties at random, so on an exact tie a split forest's label may differ from R's
//!   (which itself may differ between two calls). A row no tree voted on (R's `NA` rows)
//!   is missing, in every column.

use protocol::host::{ForestPart, TreeRange};
use protocol::{Column, ColumnData, ForestInfo, Frame, ModelInfo};

/// What a split forest answers, decided by the model and the predict type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForestOutput {
    /// Regression: a `.pred` column of means.
    Mean,
    /// Classification labels: a `.pred` factor.
    Labels,
    /// Classification probabilities: one column per class.
    Probabilities,
}

impl ForestOutput {
    /// How `model`'s forest answers `predict_type` when split, or `None` when it cannot be
    /// split for that type (no forest, or a type only the whole model knows, such as
    /// ranger's `se`): such requests are scored whole, so R answers them (or refuses) as
    /// usual.
    pub fn of(model: &ModelInfo, predict_type: Option<&str>) -> Option<ForestOutput> {
        let forest = model.forest.as_ref()?;
        let randomforest = model.r_class.iter().any(|c| c == "randomForest");
        match (&forest.classes, predict_type) {
            (None, None | Some("response")) => Some(ForestOutput::Mean),
            (Some(_), None | Some("response")) => Some(ForestOutput::Labels),
            (Some(_), Some("class")) if randomforest => Some(ForestOutput::Labels),
            (Some(_), Some("prob" | "vote")) if randomforest => Some(ForestOutput::Probabilities),
            _ => None,
        }
    }
}

/// Trees `0..n_trees` cut into `k` contiguous ranges whose sizes differ by at most one;
/// `k` is clamped to `1..=n_trees`.
pub fn tree_ranges(n_trees: u32, k: usize) -> Vec<TreeRange> {
    crate::rows::even_ranges(n_trees as usize, k)
        .into_iter()
        .map(|r| TreeRange { start: r.start as u32, end: r.end as u32 })
        .collect()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CombineError {
    #[error("forest parts cover {got} trees, the forest has {want}")]
    Coverage { got: u64, want: u32 },
    #[error("a forest part of {n_trees} trees answered {got} rows for {want}")]
    Rows { n_trees: u32, got: usize, want: usize },
    #[error("a forest part answered {got} where {want} was expected")]
    Kind { got: &'static str, want: &'static str },
    #[error("a forest part voted for classes {got:?}, the forest's are {want:?}")]
    Classes { got: Vec<String>, want: Vec<String> },
}

/// Combines parts over disjoint tree ranges that cover `forest` into the frame the whole
/// forest answers for `n_rows` rows.
pub fn combine(
    parts: &[ForestPart],
    forest: &ForestInfo,
    output: ForestOutput,
    n_rows: usize,
) -> Result<Frame, CombineError> {
    let covered: u64 = parts.iter().map(|p| u64::from(n_trees(p))).sum();
    if covered != u64::from(forest.n_trees) {
        return Err(CombineError::Coverage { got: covered, want: forest.n_trees });
    }
    match (output, &forest.classes) {
        (ForestOutput::Mean, None) => combine_means(parts, n_rows),
        (ForestOutput::Labels | ForestOutput::Probabilities, Some(classes)) => {
            let votes = sum_votes(parts, classes, n_rows)?;
            Ok(if output == ForestOutput::Labels {
                labels(&votes, classes, n_rows)
            } else {
                probabilities(&votes, classes, n_rows)
            })
        }
        (ForestOutput::Mean, Some(_)) => Err(CombineError::Kind { got: "votes", want: "means" }),
        (_, None) => Err(CombineError::Kind { got: "means", want: "votes" }),
    }
}

fn n_trees(part: &ForestPart) -> u32 {
    match part {
        ForestPart::Regression { n_trees, .. } | ForestPart::Votes { n_trees, .. } => *n_trees,
    }
}

fn combine_means(parts: &[ForestPart], n_rows: usize) -> Result<Frame, CombineError> {
    let mut sums: Vec<Option<f64>> = vec![Some(0.0); n_rows];
    let mut total_trees = 0.0;
    for part in parts {
        let ForestPart::Regression { n_trees, mean } = part else {
            return Err(CombineError::Kind { got: "votes", want: "means" });
        };
        if mean.len() != n_rows {
            return Err(CombineError::Rows { n_trees: *n_trees, got: mean.len(), want: n_rows });
        }
        let weight = f64::from(*n_trees);
        total_trees += weight;
        for (sum, mean) in sums.iter_mut().zip(mean) {
            *sum = match (*sum, mean) {
                (Some(sum), Some(mean)) => Some(sum + weight * mean),
                _ => None,
            };
        }
    }
    let means = sums.into_iter().map(|sum| sum.map(|s| s / total_trees)).collect();
    Ok(Frame { n_rows, columns: vec![Column::new(".pred", ColumnData::F64 { values: means })] })
}

/// `votes[class][row]`, summed over the parts.
fn sum_votes(parts: &[ForestPart], classes: &[String], n_rows: usize) -> Result<Vec<Vec<u64>>, CombineError> {
    let mut total = vec![vec![0u64; n_rows]; classes.len()];
    for part in parts {
        let ForestPart::Votes { n_trees, classes: part_classes, votes } = part else {
            return Err(CombineError::Kind { got: "means", want: "votes" });
        };
        if part_classes != classes || votes.len() != classes.len() {
            return Err(CombineError::Classes { got: part_classes.clone(), want: classes.to_vec() });
        }
        for (sum, votes) in total.iter_mut().zip(votes) {
            if votes.len() != n_rows {
                return Err(CombineError::Rows { n_trees: *n_trees, got: votes.len(), want: n_rows });
            }
            for (sum, vote) in sum.iter_mut().zip(votes) {
                *sum += u64::from(*vote);
            }
        }
    }
    Ok(total)
}

fn labels(votes: &[Vec<u64>], classes: &[String], n_rows: usize) -> Frame {
    let values = (0..n_rows)
        .map(|row| {
            // The first class with the most votes: `max_by_key` keeps the last maximum, so
            // scan in reverse to keep the first.
            let (best, most) =
                (0..classes.len()).rev().map(|class| (class, votes[class][row])).max_by_key(|(_, n)| *n)?;
            (most > 0).then_some(best as u32)
        })
        .collect();
    let pred = ColumnData::Factor { levels: classes.to_vec(), values, ordered: false };
    Frame { n_rows, columns: vec![Column::new(".pred", pred)] }
}

fn probabilities(votes: &[Vec<u64>], classes: &[String], n_rows: usize) -> Frame {
    let totals: Vec<u64> = (0..n_rows).map(|row| votes.iter().map(|class| class[row]).sum()).collect();
    let columns = classes
        .iter()
        .zip(votes)
        .map(|(class, votes)| {
            // As randomForest: each row's votes divided by that row's total.
            let values = votes.iter().zip(&totals).map(|(&v, &t)| (t > 0).then(|| v as f64 / t as f64)).collect();
            Column::new(class.clone(), ColumnData::F64 { values })
        })
        .collect();
    Frame { n_rows, columns }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn votes(n_trees: u32, votes: &[&[u32]]) -> ForestPart {
        ForestPart::Votes { n_trees, classes: classes(), votes: votes.iter().map(|v| v.to_vec()).collect() }
    }

    fn classes() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    fn mean(n_trees: u32, mean: &[Option<f64>]) -> ForestPart {
        ForestPart::Regression { n_trees, mean: mean.to_vec() }
    }

    fn regression(n_trees: u32) -> ForestInfo {
        ForestInfo { n_trees, classes: None }
    }

    fn classification(n_trees: u32) -> ForestInfo {
        ForestInfo { n_trees, classes: Some(classes()) }
    }

    fn one(name: &str, data: ColumnData) -> Frame {
        Frame::new(vec![Column::new(name, data)]).unwrap()
    }

    fn labels_frame(values: &[Option<u32>]) -> Frame {
        one(".pred", ColumnData::Factor { levels: classes(), values: values.to_vec(), ordered: false })
    }

    fn check(
        parts: &[ForestPart],
        forest: ForestInfo,
        output: ForestOutput,
        n_rows: usize,
        expected: Result<Frame, &str>,
    ) {
        match (combine(parts, &forest, output, n_rows), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => assert!(got.to_string().contains(want), "{got} does not mention {want}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn regression_is_the_tree_weighted_mean() {
        // 3 trees averaging 2.0 and 1 tree saying 6.0: the forest's mean is 3.0.
        let mean_frame = |values: &[Option<f64>]| one(".pred", ColumnData::F64 { values: values.to_vec() });
        check(
            &[mean(3, &[Some(2.0), Some(1.0), None]), mean(1, &[Some(6.0), Some(1.0), Some(5.0)])],
            regression(4),
            ForestOutput::Mean,
            3,
            Ok(mean_frame(&[Some(3.0), Some(1.0), None])),
        );
        check(&[mean(5, &[Some(1.5)])], regression(5), ForestOutput::Mean, 1, Ok(mean_frame(&[Some(1.5)])));
        check(&[mean(3, &[Some(1.0)])], regression(4), ForestOutput::Mean, 1, Err("cover 3 trees, the forest has 4"));
        check(&[mean(4, &[Some(1.0)])], regression(4), ForestOutput::Mean, 2, Err("answered 1 rows for 2"));
        check(&[votes(4, &[&[4], &[0], &[0]])], regression(4), ForestOutput::Mean, 1, Err("answered votes"));
    }

    #[test]
    fn classification_sums_votes() {
        // votes[class][row]. Row 0: 1 + 4 + 0 votes, "b" wins; row 1: 2 + 0 + 3, "c" wins
        // over the earlier "a"; row 2: no tree voted (R's NA row).
        let parts = [votes(2, &[&[0, 1, 0], &[2, 0, 0], &[0, 1, 0]]), votes(3, &[&[1, 1, 0], &[2, 0, 0], &[0, 2, 0]])];
        check(&parts, classification(5), ForestOutput::Labels, 3, Ok(labels_frame(&[Some(1), Some(2), None])));
        let probabilities = Frame::new(vec![
            Column::new("a", ColumnData::F64 { values: vec![Some(0.2), Some(0.4), None] }),
            Column::new("b", ColumnData::F64 { values: vec![Some(0.8), Some(0.0), None] }),
            Column::new("c", ColumnData::F64 { values: vec![Some(0.0), Some(0.6), None] }),
        ])
        .unwrap();
        check(&parts, classification(5), ForestOutput::Probabilities, 3, Ok(probabilities));
        // Ties go to the first tied class in level order.
        check(
            &[votes(3, &[&[1], &[1], &[1]])],
            classification(3),
            ForestOutput::Labels,
            1,
            Ok(labels_frame(&[Some(0)])),
        );
        check(
            &[votes(4, &[&[0], &[2], &[2]])],
            classification(4),
            ForestOutput::Labels,
            1,
            Ok(labels_frame(&[Some(1)])),
        );
        let other_classes =
            ForestPart::Votes { n_trees: 3, classes: vec!["a".into(), "b".into()], votes: vec![vec![3], vec![0]] };
        check(&[other_classes], classification(3), ForestOutput::Labels, 1, Err("classes"));
        check(
            &[votes(3, &[&[3], &[0], &[0]])],
            classification(3),
            ForestOutput::Labels,
            2,
            Err("answered 1 rows for 2"),
        );
        check(&[mean(3, &[Some(1.0)])], classification(3), ForestOutput::Labels, 1, Err("answered means"));
    }

    #[test]
    fn tree_ranges_cover_the_forest() {
        let range = |start, end| TreeRange { start, end };
        assert_eq!(tree_ranges(500, 3), [range(0, 167), range(167, 334), range(334, 500)]);
        assert_eq!(tree_ranges(200, 2), [range(0, 100), range(100, 200)]);
        assert_eq!(tree_ranges(2, 4), [range(0, 1), range(1, 2)]);
    }

    #[test]
    fn which_requests_split_by_trees() {
        let model = |classes: Option<Vec<String>>, r_class: &str| ModelInfo {
            name: "m".into(),
            version: None,
            kind: protocol::ModelKind::Predict,
            r_class: vec![r_class.into()],
            schema: None,
            predict_type: None,
            forest: Some(ForestInfo { n_trees: 10, classes }),
            engine: None,
        };
        let check = |model: &ModelInfo, predict_type: Option<&str>, expected: Option<ForestOutput>| {
            assert_eq!(ForestOutput::of(model, predict_type), expected, "{:?} {predict_type:?}", model.r_class)
        };
        let rf_reg = model(None, "randomForest");
        let rf_class = model(Some(classes()), "randomForest");
        let ranger_class = model(Some(classes()), "ranger");
        check(&rf_reg, None, Some(ForestOutput::Mean));
        check(&rf_reg, Some("response"), Some(ForestOutput::Mean));
        check(&rf_reg, Some("prob"), None);
        check(&rf_class, None, Some(ForestOutput::Labels));
        check(&rf_class, Some("class"), Some(ForestOutput::Labels));
        check(&rf_class, Some("prob"), Some(ForestOutput::Probabilities));
        check(&rf_class, Some("vote"), Some(ForestOutput::Probabilities));
        check(&rf_class, Some("proximity"), None);
        check(&ranger_class, None, Some(ForestOutput::Labels));
        check(&ranger_class, Some("prob"), None);
        check(&ModelInfo { forest: None, ..rf_reg.clone() }, None, None);
    }
}
