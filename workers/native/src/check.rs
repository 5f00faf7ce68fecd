//! The self-check at load, the one comparison of R's answers with the native engine's:
//! [`SELF_CHECK_ROWS`] rows made from the model's schema and its trees' thresholds
//! ([`NativeModel::check_rows`]), scored by R and natively for every `type` the engine
//! answers, compared bit for bit ([`NativeModel::self_check`], [`compare`]).
//!
//! Two callers run it, each asking R its own way, and must judge alike: the worker (R's
//! answers from its pool of hosts, for `engine = "auto"`), and an R host loading a model
//! whose `model.toml` says `r_fallback = false` (R's answers from the model's own scorer,
//! before the host lets go of the model). Both score the same rows, so they see the same
//! differences.

use protocol::host::HostOutput;
use protocol::{ColumnData, ErrorBody, Frame, Schema, SelfCheck};

use crate::{NativeModel, Prediction};

/// Rows the self-check scores with each `type`.
pub const SELF_CHECK_ROWS: usize = 256;

/// The seed of the self-check's rows: the same rows on every host and worker.
pub const SELF_CHECK_SEED: u64 = 0x5eed;

/// The rows a self-check scores, and the `type`s it scores them with.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckRows {
    /// Conformed to the model's schema, as a request's frame is.
    pub frame: Frame,
    pub types: Vec<String>,
}

impl NativeModel {
    /// The self-check's rows for a model of `schema`, or the failed check when none can be
    /// made (no schema, rows that do not conform to it).
    pub fn check_rows(&self, schema: Option<&Schema>) -> Result<CheckRows, SelfCheck> {
        let types: Vec<String> = self.types().iter().map(|t| t.to_string()).collect();
        let Some(schema) = schema else {
            return Err(SelfCheck::failed(types, "the model has no input schema to make sample rows from".into()));
        };
        let sample = self.sample(schema, SELF_CHECK_ROWS, SELF_CHECK_SEED);
        match protocol::conform(&sample, schema) {
            Ok(frame) => Ok(CheckRows { frame, types }),
            Err(e) => Err(SelfCheck::failed(types, format!("the sample rows do not fit the schema: {e}"))),
        }
    }

    /// The self-check of `rows`: R's answers (`r_answers`, one per type of `rows.types`, in
    /// that order: R's frame, or why R gave none) against the native engine's. Stops at
    /// the first type the native engine declines or R does not answer, so that an
    /// iterator that calls R lazily calls it no further.
    pub fn self_check(
        &self,
        rows: &CheckRows,
        r_answers: impl IntoIterator<Item = Result<Frame, String>>,
    ) -> SelfCheck {
        let types = rows.types.clone();
        let mut check = SelfCheck {
            passed: true,
            rows: rows.frame.n_rows as u32,
            types: types.clone(),
            mismatches: 0,
            ties: 0,
            message: None,
        };
        let mut r_answers = r_answers.into_iter();
        for predict_type in &rows.types {
            let mine = match self.predict(&rows.frame, Some(predict_type)) {
                Ok(prediction) => prediction,
                Err(declined) => {
                    return SelfCheck::failed(
                        types,
                        format!("type '{predict_type}': the native engine declined: {declined}"),
                    )
                }
            };
            let theirs = match r_answers.next() {
                Some(Ok(frame)) => frame,
                Some(Err(why)) => return SelfCheck::failed(types, format!("type '{predict_type}': {why}")),
                None => return SelfCheck::failed(types, format!("type '{predict_type}': R was not asked")),
            };
            let agreement = compare(&mine, &theirs);
            check.mismatches += agreement.mismatches;
            check.ties = check.ties.max(agreement.ties);
            if let Some(first) = agreement.first {
                check.passed = false;
                check.message.get_or_insert(format!("type '{predict_type}': {first}"));
            }
        }
        check
    }
}

/// R's answer to a self-check's rows as [`NativeModel::self_check`] takes it: the frame, or
/// what R answered instead.
pub fn r_answer(result: Result<HostOutput, ErrorBody>) -> Result<Frame, String> {
    match result {
        Ok(HostOutput::Frame(frame)) => Ok(frame),
        Ok(other) => Err(format!("R answered {other:?}, not a frame")),
        Err(error) => Err(format!("R refused the sample: {}", error.message)),
    }
}

/// What the self-check found comparing one `type`'s answers.
#[derive(Debug, Default, PartialEq)]
pub struct Agreement {
    /// Values that differ (a label differing on a tied row excepted).
    pub mismatches: u32,
    /// Rows whose class was a tie of votes.
    pub ties: u32,
    /// The first difference, in words.
    pub first: Option<String>,
}

/// Compares the native answer with R's, value by value: doubles by their bits, labels by
/// name. A label that differs on a row the native engine reports tied is not a mismatch:
/// R broke that tie at random.
pub fn compare(native: &Prediction, r: &Frame) -> Agreement {
    let mut agreement = Agreement { ties: native.ties.len() as u32, ..Agreement::default() };
    let mut differ = |what: String| {
        agreement.mismatches += 1;
        agreement.first.get_or_insert(what);
    };
    let names = |f: &Frame| f.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    if names(&native.frame) != names(r) || native.frame.n_rows != r.n_rows {
        differ(format!(
            "R answered columns {:?} for {} rows, the native engine {:?} for {}",
            names(r),
            r.n_rows,
            names(&native.frame),
            native.frame.n_rows
        ));
        return agreement;
    }
    for (ours, theirs) in native.frame.columns.iter().zip(&r.columns) {
        let column = &ours.name;
        match (&ours.data, &theirs.data) {
            (ColumnData::F64 { values: a }, ColumnData::F64 { values: b }) => {
                for (row, (x, y)) in a.iter().zip(b).enumerate() {
                    if x.map(f64::to_bits) != y.map(f64::to_bits) {
                        differ(format!("column '{column}' row {}: R {y:?}, native {x:?}", row + 1));
                    }
                }
            }
            (ColumnData::Factor { levels: la, values: a, .. }, ColumnData::Factor { levels: lb, values: b, .. }) => {
                for (row, (x, y)) in a.iter().zip(b).enumerate() {
                    let x = x.map(|c| la[c as usize].as_str());
                    let y = y.map(|c| lb[c as usize].as_str());
                    if x != y && !native.ties.contains(&row) {
                        differ(format!("column '{column}' row {}: R {y:?}, native {x:?}", row + 1));
                    }
                }
            }
            (a, b) => {
                differ(format!("column '{column}': R answered {}, the native engine {}", b.type_name(), a.type_name()))
            }
        }
    }
    agreement
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::Column;

    fn doubles(values: &[f64]) -> Frame {
        Frame::new(vec![Column::new(".pred", ColumnData::F64 { values: values.iter().copied().map(Some).collect() })])
            .unwrap()
    }

    fn labels(levels: &[&str], codes: &[u32]) -> Frame {
        let levels = levels.iter().map(|l| l.to_string()).collect();
        let values = codes.iter().copied().map(Some).collect();
        Frame::new(vec![Column::new(".pred", ColumnData::Factor { levels, values, ordered: false })]).unwrap()
    }

    /// Doubles compare by their bits: one ulp apart, or 0.0 against -0.0, is a mismatch.
    #[test]
    fn doubles_agree_only_bit_for_bit() {
        let native = |values: &[f64]| Prediction { frame: doubles(values), ties: Vec::new() };
        assert_eq!(compare(&native(&[1.5, 2.0]), &doubles(&[1.5, 2.0])), Agreement::default());
        let next = f64::from_bits(2.0f64.to_bits() + 1);
        let agreement = compare(&native(&[1.5, next]), &doubles(&[1.5, 2.0]));
        assert_eq!(agreement.mismatches, 1);
        assert!(agreement.first.unwrap().contains("row 2"));
        assert_eq!(compare(&native(&[0.0]), &doubles(&[-0.0])).mismatches, 1);
    }

    /// Labels compare by name (the levels may be listed apart), and a tied row may differ.
    #[test]
    fn labels_agree_by_name_and_ties_are_excused() {
        let r = labels(&["a", "b", "c"], &[0, 1, 2]);
        let same = Prediction { frame: labels(&["a", "b", "c"], &[0, 1, 2]), ties: Vec::new() };
        assert_eq!(compare(&same, &r), Agreement::default());
        let tie = Prediction { frame: labels(&["a", "b", "c"], &[0, 2, 2]), ties: vec![1] };
        assert_eq!(compare(&tie, &r), Agreement { mismatches: 0, ties: 1, first: None });
        let wrong = Prediction { frame: labels(&["a", "b", "c"], &[1, 1, 2]), ties: vec![1] };
        let agreement = compare(&wrong, &r);
        assert_eq!((agreement.mismatches, agreement.ties), (1, 1));
        assert!(agreement.first.unwrap().contains("row 1: R Some(\"a\"), native Some(\"b\")"));
    }

    #[test]
    fn shapes_that_differ_are_one_mismatch() {
        let native = Prediction { frame: doubles(&[1.0]), ties: Vec::new() };
        let agreement = compare(&native, &labels(&["a"], &[0]));
        assert_eq!(agreement.mismatches, 1);
        assert!(agreement.first.unwrap().contains("R answered factor, the native engine f64"));
        let agreement = compare(&native, &doubles(&[1.0, 2.0]));
        assert!(agreement.first.unwrap().contains("for 2 rows"));
    }
}
