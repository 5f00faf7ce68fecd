//! Typed columnar frames: what a `data.frame` becomes on the wire.
//!
//! A frame is a list of named columns of equal length. Each column carries its type, so
//! the R host builds R vectors straight from it and nobody parses JSON on the fast path.
//! Missing values (R's `NA`) are `nil` on the wire and `None` here.

use serde::{Deserialize, Serialize};

/// A table of named, typed columns, all `n_rows` long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Frame {
    pub n_rows: usize,
    pub columns: Vec<Column>,
}

/// One named column. On the wire: `{"name": .., "type": .., "values": [..]}` (factors add
/// `levels` and `ordered`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(flatten)]
    pub data: ColumnData,
}

/// A column's values, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ColumnData {
    /// R `double`.
    F64 { values: Vec<Option<f64>> },
    /// R `integer`.
    I32 { values: Vec<Option<i32>> },
    /// R `logical`.
    Bool { values: Vec<Option<bool>> },
    /// R `character`.
    Str { values: Vec<Option<String>> },
    /// R `factor`: `values` are 0-based indices into `levels`.
    Factor {
        levels: Vec<String>,
        values: Vec<Option<u32>>,
        #[serde(default)]
        ordered: bool,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("column '{name}' has {len} values but the frame has {n_rows} rows")]
    Length { name: String, len: usize, n_rows: usize },
    #[error("column '{name}' appears twice")]
    Duplicate { name: String },
    #[error(
        "column '{name}': factor code {code} in row {row} is out of range (rows count from 1) ({n_levels} levels)"
    )]
    FactorCode { name: String, row: usize, code: u32, n_levels: usize },
}

impl ColumnData {
    pub fn len(&self) -> usize {
        match self {
            ColumnData::F64 { values } => values.len(),
            ColumnData::I32 { values } => values.len(),
            ColumnData::Bool { values } => values.len(),
            ColumnData::Str { values } => values.len(),
            ColumnData::Factor { values, .. } => values.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The wire name of this column's type (`f64`, `i32`, `bool`, `str`, `factor`).
    pub fn type_name(&self) -> &'static str {
        match self {
            ColumnData::F64 { .. } => "f64",
            ColumnData::I32 { .. } => "i32",
            ColumnData::Bool { .. } => "bool",
            ColumnData::Str { .. } => "str",
            ColumnData::Factor { .. } => "factor",
        }
    }
}

impl Column {
    pub fn new(name: impl Into<String>, data: ColumnData) -> Self {
        Column { name: name.into(), data }
    }
}

impl Frame {
    /// Builds a frame and checks it (see [`Frame::validate`]).
    pub fn new(columns: Vec<Column>) -> Result<Self, FrameError> {
        let n_rows = columns.first().map_or(0, |c| c.data.len());
        let frame = Frame { n_rows, columns };
        frame.validate()?;
        Ok(frame)
    }

    /// Checks what the type system cannot: equal lengths, unique names, factor codes in range.
    /// Frames from the bus are untrusted and pass through here before they reach R.
    pub fn validate(&self) -> Result<(), FrameError> {
        let mut seen = std::collections::HashSet::new();
        for column in &self.columns {
            if !seen.insert(column.name.as_str()) {
                return Err(FrameError::Duplicate { name: column.name.clone() });
            }
            let len = column.data.len();
            if len != self.n_rows {
                return Err(FrameError::Length { name: column.name.clone(), len, n_rows: self.n_rows });
            }
            if let ColumnData::Factor { levels, values, .. } = &column.data {
                for (row, code) in values.iter().enumerate() {
                    if let Some(code) = *code {
                        if code as usize >= levels.len() {
                            return Err(FrameError::FactorCode {
                                name: column.name.clone(),
                                row: row + 1,
                                code,
                                n_levels: levels.len(),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The first string R would get from this frame that holds a NUL character (a column
    /// name, a character value, a factor level), if any. R's strings cannot hold one, and
    /// making one ends the R host: such frames are refused before R sees them.
    pub fn find_nul(&self) -> Option<NulAt<'_>> {
        self.columns.iter().find_map(|column| {
            let name = column.name.as_str();
            if name.contains('\0') {
                return Some(NulAt::ColumnName(name));
            }
            match &column.data {
                ColumnData::Str { values } => values
                    .iter()
                    .position(|v| v.as_deref().is_some_and(|s| s.contains('\0')))
                    .map(|row| NulAt::Value { column: name, row: row + 1 }),
                ColumnData::Factor { levels, .. } if levels.iter().any(|l| l.contains('\0')) => {
                    Some(NulAt::Level { column: name })
                }
                _ => None,
            }
        })
    }
}

/// Why a string with a NUL character is refused, for messages.
pub const NUL_IN_R: &str = "which R strings cannot hold";

/// Where [`Frame::find_nul`] found a NUL character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NulAt<'a> {
    ColumnName(&'a str),
    /// A character value; `row` counts from 1.
    Value {
        column: &'a str,
        row: usize,
    },
    Level {
        column: &'a str,
    },
}
