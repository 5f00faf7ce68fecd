//! A model's input schema and [`conform`], which fits an incoming frame to it.
//!
//! Conforming happens before R sees anything, so every input problem is reported in plain
//! words (column, 1-based row, value) instead of as an R error from deep inside `predict`,
//! and a bad request never costs an R call.

use serde::{Deserialize, Serialize};

use crate::frame::{Column, ColumnData, Frame};

/// The columns a model needs, in the order R should see them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Schema {
    pub columns: Vec<ColumnSpec>,
}

/// One input column. `levels` is set for factors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub column_type: ColumnType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub levels: Option<Vec<String>>,
}

/// R's vector types, as `model.toml` and `GET /models` spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    Numeric,
    Integer,
    Logical,
    Character,
    Factor,
    Ordered,
}

/// Why a frame does not fit a schema. Rows are 1-based, as in R.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InputError {
    #[error("missing column '{name}' (the model needs: {needed})")]
    MissingColumn { name: String, needed: String },
    #[error("column '{name}': expected {expected}, got {got} in row {row}: {value}")]
    WrongType { name: String, expected: &'static str, got: &'static str, row: usize, value: String },
    #[error("column '{name}': unseen level '{value}' in row {row} (known levels: {levels})")]
    UnseenLevel { name: String, value: String, row: usize, levels: String },
    #[error("column '{name}': factor '{name}' has no levels in the model's schema")]
    NoLevels { name: String },
}

impl ColumnType {
    /// R's name for the type, as `typeof()` (or `class()` for factors) says it: `double`,
    /// `integer`, `logical`, `character`, `factor`, `ordered`.
    pub fn r_type(self) -> &'static str {
        match self {
            ColumnType::Numeric => "double",
            ColumnType::Integer => "integer",
            ColumnType::Logical => "logical",
            ColumnType::Character => "character",
            ColumnType::Factor => "factor",
            ColumnType::Ordered => "ordered",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ColumnType::Numeric => "a number",
            ColumnType::Integer => "an integer",
            ColumnType::Logical => "true or false",
            ColumnType::Character => "a string",
            ColumnType::Factor | ColumnType::Ordered => "one of the factor's levels",
        }
    }
}

/// Every problem [`conform`] found, in column order. Shown as one message: the first
/// [`InputErrors::SHOWN`] problems joined by `; `, then how many more there are.
#[derive(Debug, Clone, PartialEq)]
pub struct InputErrors(pub Vec<InputError>);

impl InputErrors {
    /// How many problems a message lists before summarising the rest.
    pub const SHOWN: usize = 20;
}

impl std::fmt::Display for InputErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = self.0.iter().take(Self::SHOWN).map(ToString::to_string).collect();
        write!(f, "{}", shown.join("; "))?;
        if self.0.len() > Self::SHOWN {
            write!(f, "; and {} more problems", self.0.len() - Self::SHOWN)?;
        }
        Ok(())
    }
}

impl std::error::Error for InputErrors {}

/// Returns the frame the model expects: the schema's columns in the schema's order, each
/// converted to the schema's type; extra columns are dropped.
///
/// Lossless conversions are made silently (integer to double, an integral double to
/// integer, a string or number to the factor level it spells); anything else is an
/// [`InputError`] naming the column, the row and the value. Every problem is reported,
/// not only the first, so a caller can fix a request in one round.
pub fn conform(frame: &Frame, schema: &Schema) -> Result<Frame, InputErrors> {
    let mut columns = Vec::with_capacity(schema.columns.len());
    let mut problems = Vec::new();
    for spec in &schema.columns {
        let Some(column) = frame.column(&spec.name) else {
            problems.push(InputError::MissingColumn {
                name: spec.name.clone(),
                needed: schema.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
            });
            continue;
        };
        match convert(column, spec) {
            Ok(data) => columns.push(Column::new(spec.name.clone(), data)),
            Err(mut errors) => problems.append(&mut errors),
        }
    }
    if !problems.is_empty() {
        return Err(InputErrors(problems));
    }
    Ok(Frame { n_rows: frame.n_rows, columns })
}

/// Collects a column's converted values, or every row's problem.
fn every_row<T>(rows: impl Iterator<Item = Result<Option<T>, InputError>>) -> Result<Vec<Option<T>>, Vec<InputError>> {
    let mut values = Vec::new();
    let mut problems = Vec::new();
    for row in rows {
        match row {
            Ok(value) => values.push(value),
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(values)
    } else {
        Err(problems)
    }
}

fn convert(column: &Column, spec: &ColumnSpec) -> Result<ColumnData, Vec<InputError>> {
    let name = &column.name;
    let wrong = |got: &'static str, row: usize, value: String| InputError::WrongType {
        name: name.clone(),
        expected: spec.column_type.describe(),
        got,
        row: row + 1,
        value,
    };
    // A column of nothing but missing values has no type of its own: it fits any.
    if all_missing(&column.data) {
        return Ok(missing_of(spec, column.data.len()));
    }
    match (spec.column_type, &column.data) {
        (ColumnType::Numeric, ColumnData::F64 { values }) => Ok(ColumnData::F64 { values: values.clone() }),
        (ColumnType::Numeric, ColumnData::I32 { values }) => {
            Ok(ColumnData::F64 { values: values.iter().map(|v| v.map(f64::from)).collect() })
        }
        (ColumnType::Integer, ColumnData::I32 { values }) => Ok(ColumnData::I32 { values: values.clone() }),
        (ColumnType::Integer, ColumnData::F64 { values }) => {
            every_row(values.iter().enumerate().map(|(row, v)| match v {
                None => Ok(None),
                Some(x) if x.fract() == 0.0 && *x >= i32::MIN as f64 + 1.0 && *x <= i32::MAX as f64 => {
                    Ok(Some(*x as i32))
                }
                Some(x) => Err(wrong("a non-integral number", row, x.to_string())),
            }))
            .map(|values| ColumnData::I32 { values })
        }
        (ColumnType::Logical, ColumnData::Bool { values }) => Ok(ColumnData::Bool { values: values.clone() }),
        (ColumnType::Character, ColumnData::Str { values }) => Ok(ColumnData::Str { values: values.clone() }),
        (ColumnType::Character, ColumnData::Factor { levels, values, .. }) => {
            Ok(ColumnData::Str { values: values.iter().map(|c| c.map(|c| levels[c as usize].clone())).collect() })
        }
        (ColumnType::Factor | ColumnType::Ordered, data) => to_factor(column, spec, data),
        // The whole column has the wrong type: one problem, shown at its first value.
        (_, data) => {
            let (row, value) = first_present(data);
            Err(vec![wrong(describe_type(data), row, value)])
        }
    }
}

fn to_factor(column: &Column, spec: &ColumnSpec, data: &ColumnData) -> Result<ColumnData, Vec<InputError>> {
    let levels = spec.levels.as_ref().ok_or_else(|| vec![InputError::NoLevels { name: column.name.clone() }])?;
    let index: std::collections::HashMap<&str, u32> =
        levels.iter().enumerate().map(|(i, l)| (l.as_str(), i as u32)).collect();
    let lookup = |row: usize, label: &str| {
        index.get(label).copied().ok_or_else(|| InputError::UnseenLevel {
            name: column.name.clone(),
            value: label.to_string(),
            row: row + 1,
            levels: levels.join(", "),
        })
    };
    let labels: Vec<Option<String>> = match data {
        ColumnData::Str { values } => values.clone(),
        ColumnData::Factor { levels: own, values, .. } => {
            values.iter().map(|c| c.map(|c| own[c as usize].clone())).collect()
        }
        // Numbers name levels such as "4", "6", "8" (a factor made from a numeric column).
        ColumnData::I32 { values } => values.iter().map(|v| v.map(|v| v.to_string())).collect(),
        ColumnData::F64 { values } => values.iter().map(|v| v.map(format_level)).collect(),
        ColumnData::Bool { .. } => {
            let (row, value) = first_present(data);
            return Err(vec![InputError::WrongType {
                name: column.name.clone(),
                expected: spec.column_type.describe(),
                got: "a boolean",
                row: row + 1,
                value,
            }]);
        }
    };
    let values =
        every_row(labels.iter().enumerate().map(|(row, label)| label.as_deref().map(|l| lookup(row, l)).transpose()))?;
    Ok(ColumnData::Factor { levels: levels.clone(), values, ordered: spec.column_type == ColumnType::Ordered })
}

/// Formats a number the way R's `as.character` does for the common cases (`4`, `2.5`).
fn format_level(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn all_missing(data: &ColumnData) -> bool {
    match data {
        ColumnData::F64 { values } => values.iter().all(Option::is_none),
        ColumnData::I32 { values } => values.iter().all(Option::is_none),
        ColumnData::Bool { values } => values.iter().all(Option::is_none),
        ColumnData::Str { values } => values.iter().all(Option::is_none),
        ColumnData::Factor { values, .. } => values.iter().all(Option::is_none),
    }
}

fn missing_of(spec: &ColumnSpec, n: usize) -> ColumnData {
    match spec.column_type {
        ColumnType::Numeric => ColumnData::F64 { values: vec![None; n] },
        ColumnType::Integer => ColumnData::I32 { values: vec![None; n] },
        ColumnType::Logical => ColumnData::Bool { values: vec![None; n] },
        ColumnType::Character => ColumnData::Str { values: vec![None; n] },
        ColumnType::Factor | ColumnType::Ordered => ColumnData::Factor {
            levels: spec.levels.clone().unwrap_or_default(),
            values: vec![None; n],
            ordered: spec.column_type == ColumnType::Ordered,
        },
    }
}

fn describe_type(data: &ColumnData) -> &'static str {
    match data {
        ColumnData::F64 { .. } | ColumnData::I32 { .. } => "a number",
        ColumnData::Bool { .. } => "a boolean",
        ColumnData::Str { .. } | ColumnData::Factor { .. } => "a string",
    }
}

/// The first non-missing value, for error messages: (0-based row, value as JSON shows it).
fn first_present(data: &ColumnData) -> (usize, String) {
    fn first<T>(values: &[Option<T>], show: impl Fn(&T) -> String) -> (usize, String) {
        values
            .iter()
            .enumerate()
            .find_map(|(row, v)| v.as_ref().map(|v| (row, show(v))))
            .unwrap_or((0, "null".to_string()))
    }
    match data {
        ColumnData::F64 { values } => first(values, |v| v.to_string()),
        ColumnData::I32 { values } => first(values, |v| v.to_string()),
        ColumnData::Bool { values } => first(values, |v| v.to_string()),
        ColumnData::Str { values } => first(values, |v| format!("{v:?}")),
        ColumnData::Factor { levels, values, .. } => first(values, |c| format!("{:?}", levels[*c as usize])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, column_type: ColumnType, levels: Option<&[&str]>) -> ColumnSpec {
        ColumnSpec { name: name.into(), column_type, levels: levels.map(|l| l.iter().map(|s| s.to_string()).collect()) }
    }

    fn check(input: Vec<Column>, schema: Vec<ColumnSpec>, expected: Result<Vec<Column>, &str>) {
        let frame = Frame::new(input).unwrap();
        let got = conform(&frame, &Schema { columns: schema });
        match (got, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got.columns, want),
            (Err(got), Err(want)) => assert_eq!(got.to_string(), want),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn conform_cases() {
        use ColumnData::*;
        let f64s = |v: &[Option<f64>]| F64 { values: v.to_vec() };
        // reorders, drops extras, widens integers
        check(
            vec![
                Column::new("extra", Bool { values: vec![Some(true)] }),
                Column::new("b", I32 { values: vec![Some(2)] }),
                Column::new("a", f64s(&[Some(1.5)])),
            ],
            vec![spec("a", ColumnType::Numeric, None), spec("b", ColumnType::Numeric, None)],
            Ok(vec![Column::new("a", f64s(&[Some(1.5)])), Column::new("b", f64s(&[Some(2.0)]))]),
        );
        check(
            vec![Column::new("a", f64s(&[Some(1.0)]))],
            vec![spec("a", ColumnType::Numeric, None), spec("b", ColumnType::Numeric, None)],
            Err("missing column 'b' (the model needs: a, b)"),
        );
        check(
            vec![Column::new("a", Str { values: vec![None, Some("x".into())] })],
            vec![spec("a", ColumnType::Numeric, None)],
            Err("column 'a': expected a number, got a string in row 2: \"x\""),
        );
        check(
            vec![Column::new("s", Str { values: vec![Some("b".into()), None, Some("z".into())] })],
            vec![spec("s", ColumnType::Factor, Some(&["a", "b"]))],
            Err("column 's': unseen level 'z' in row 3 (known levels: a, b)"),
        );
        check(
            vec![Column::new("s", Str { values: vec![Some("b".into()), None] })],
            vec![spec("s", ColumnType::Factor, Some(&["a", "b"]))],
            Ok(vec![Column::new(
                "s",
                Factor { levels: vec!["a".into(), "b".into()], values: vec![Some(1), None], ordered: false },
            )]),
        );
        check(
            vec![Column::new("cyl", I32 { values: vec![Some(6)] })],
            vec![spec("cyl", ColumnType::Factor, Some(&["4", "6", "8"]))],
            Ok(vec![Column::new(
                "cyl",
                Factor { levels: vec!["4".into(), "6".into(), "8".into()], values: vec![Some(1)], ordered: false },
            )]),
        );
        check(
            vec![Column::new("n", f64s(&[Some(2.0), Some(2.5)]))],
            vec![spec("n", ColumnType::Integer, None)],
            Err("column 'n': expected an integer, got a non-integral number in row 2: 2.5"),
        );
        // every problem is reported, in column order, not only the first
        check(
            vec![
                Column::new("s", Str { values: vec![Some("z".into()), Some("a".into()), Some("y".into())] }),
                Column::new("n", f64s(&[Some(1.5), Some(2.0), Some(3.5)])),
            ],
            vec![
                spec("a", ColumnType::Numeric, None),
                spec("s", ColumnType::Factor, Some(&["a", "b"])),
                spec("n", ColumnType::Integer, None),
            ],
            Err("missing column 'a' (the model needs: a, s, n); \
                 column 's': unseen level 'z' in row 1 (known levels: a, b); \
                 column 's': unseen level 'y' in row 3 (known levels: a, b); \
                 column 'n': expected an integer, got a non-integral number in row 1: 1.5; \
                 column 'n': expected an integer, got a non-integral number in row 3: 3.5"),
        );
        // an all-missing column fits any type
        check(
            vec![Column::new("s", f64s(&[None]))],
            vec![spec("s", ColumnType::Character, None)],
            Ok(vec![Column::new("s", Str { values: vec![None] })]),
        );
    }
}
