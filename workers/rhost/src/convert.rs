//! Conversions at the R boundary: wire frames to `data.frame`s, R results back to frames
//! (or to forest parts), and the schema list `.rfleet_schema()` answers to a [`Schema`].
//!
//! Vectors are allocated once and filled straight from the columns (no JSON, no
//! intermediate R calls). Missing values map both ways: `None` is `NA`, and both `NA` and
//! `NaN` come back as `None`.

use std::collections::HashMap;

use extendr_api::prelude::*;
use extendr_api::scalar::{Rbool, Rfloat, Rint};
use extendr_api::{Error, Result};
use protocol::host::ForestPart;
use protocol::{
    Column, ColumnData, ColumnSpec, ColumnType, ErrorBody, ErrorCode, Frame, Input, NulAt, Schema, NUL_IN_R,
};

/// Refuses input holding a NUL character where R would get it as a string (see
/// [`Frame::find_nul`]; also the predict type and a raw JSON body): making one ends the
/// host. The dispatcher refuses such requests already; this covers direct publishers.
pub fn refuse_nul(input: &Input, predict_type: Option<&str>) -> std::result::Result<(), ErrorBody> {
    let refused = |what: String| {
        Err(ErrorBody::new(ErrorCode::InvalidInput, format!("{what} holds a NUL character, {NUL_IN_R}")))
    };
    if predict_type.is_some_and(|t| t.contains('\0')) {
        return refused("the predict type".into());
    }
    match input {
        Input::Json(body) if body.contains('\0') => refused("the JSON body".into()),
        Input::Json(_) => Ok(()),
        Input::Frame(frame) => match frame.find_nul() {
            None => Ok(()),
            Some(NulAt::ColumnName(name)) => refused(format!("column name {name:?}")),
            Some(NulAt::Value { column, row }) => refused(format!("column '{column}', row {row}")),
            Some(NulAt::Level { column }) => refused(format!("a level of column '{column}'")),
        },
    }
}

/// R vectors that every request of a model would otherwise allocate again: the column
/// names and each factor column's levels. A frame conformed to a schema repeats them
/// exactly, so they are kept per model and reused while they match.
#[derive(Default)]
pub struct FrameCache {
    names: Option<(Vec<String>, Robj)>,
    levels: HashMap<String, (Vec<String>, Robj)>,
}

/// Builds the `data.frame` R sees: one vector per column, `names`, class `data.frame` and
/// compact row names `c(NA_integer_, -n)`, exactly what `data.frame()` would make.
pub fn data_frame(frame: &Frame, cache: &mut FrameCache) -> Result<Robj> {
    let columns = frame.columns.iter().map(|column| column_vector(column, cache)).collect::<Result<Vec<Robj>>>()?;
    let mut df: Robj = List::from_values(columns).into();
    let names = match &cache.names {
        Some((names, robj)) if names.iter().eq(frame.columns.iter().map(|c| &c.name)) => robj.clone(),
        _ => {
            let names: Vec<String> = frame.columns.iter().map(|c| c.name.clone()).collect();
            let robj: Robj = Strings::from_values(names.iter().map(String::as_str)).into();
            cache.names = Some((names, robj.clone()));
            robj
        }
    };
    df.set_attrib(names_symbol(), names)?;
    let n_rows = i32::try_from(frame.n_rows).map_err(|_| Error::Other("frame has too many rows for R".into()))?;
    df.set_attrib(row_names_symbol(), Integers::from_values([Rint::na(), Rint::from(-n_rows)]))?;
    df.set_class(["data.frame"])?;
    Ok(df)
}

fn column_vector(column: &Column, cache: &mut FrameCache) -> Result<Robj> {
    Ok(match &column.data {
        ColumnData::F64 { values } => Doubles::from_values(values.iter().map(|v| Rfloat::from(*v))).into(),
        ColumnData::I32 { values } => Integers::from_values(values.iter().map(|v| Rint::from(*v))).into(),
        ColumnData::Bool { values } => Logicals::from_values(values.iter().map(|v| Rbool::from(*v))).into(),
        ColumnData::Str { values } => Strings::from_values(values.iter().map(|v| match v {
            Some(s) => Rstr::from(s.as_str()),
            None => Rstr::na(),
        }))
        .into(),
        ColumnData::Factor { levels, values, ordered } => {
            // Wire codes are 0-based, R's are 1-based; codes were checked against the
            // levels by `Frame::validate`, so they fit an R integer.
            let mut codes: Robj = Integers::from_values(values.iter().map(|v| match v {
                Some(code) => Rint::from(*code as i32 + 1),
                None => Rint::na(),
            }))
            .into();
            let levels_robj = match cache.levels.get(&column.name) {
                Some((cached, robj)) if cached == levels => robj.clone(),
                _ => {
                    let robj: Robj = Strings::from_values(levels.iter().map(String::as_str)).into();
                    cache.levels.insert(column.name.clone(), (levels.clone(), robj.clone()));
                    robj
                }
            };
            codes.set_attrib(levels_symbol(), levels_robj)?;
            if *ordered {
                codes.set_class(["ordered", "factor"])?;
            } else {
                codes.set_class(["factor"])?;
            }
            codes
        }
    })
}

/// Turns the named list of columns `.rfleet_columns()` answers into a frame. The R side
/// has already checked that every column is one of the wire types and `n_rows` long;
/// this checks again rather than trust it, since a wrong length would corrupt the reply.
pub fn frame_from_columns(columns: &Robj, n_rows: usize) -> std::result::Result<Frame, String> {
    let list = columns.as_list().ok_or("the scorer did not answer a list of columns")?;
    let mut out = Vec::with_capacity(list.len());
    for (name, value) in list.iter() {
        let data = column_data(&value).ok_or_else(|| format!("column '{name}' has R type {:?}", value.rtype()))?;
        if data.len() != n_rows {
            return Err(format!("column '{name}' has {} values for {n_rows} rows", data.len()));
        }
        out.push(Column::new(name, data));
    }
    Ok(Frame { n_rows, columns: out })
}

fn column_data(x: &Robj) -> Option<ColumnData> {
    if x.is_factor() {
        let codes = x.as_integer_slice()?;
        let levels: Vec<String> = x.levels().map(|l| l.map(str::to_string).collect()).unwrap_or_default();
        let n_levels = levels.len() as i32;
        return Some(ColumnData::Factor {
            values: codes.iter().map(|&c| (c != i32::MIN && c >= 1 && c <= n_levels).then(|| (c - 1) as u32)).collect(),
            ordered: x.inherits("ordered"),
            levels,
        });
    }
    Some(match x.rtype() {
        // R's NA_real_ is one NaN among others; the wire has one missing value for both.
        Rtype::Doubles => {
            ColumnData::F64 { values: x.as_real_slice()?.iter().map(|v| (!v.is_nan()).then_some(*v)).collect() }
        }
        Rtype::Integers => {
            ColumnData::I32 { values: x.as_integer_slice()?.iter().map(|v| (*v != i32::MIN).then_some(*v)).collect() }
        }
        Rtype::Logicals => ColumnData::Bool {
            values: x.as_logical_slice()?.iter().map(|v| (!v.is_na()).then(|| v.is_true())).collect(),
        },
        Rtype::Strings => {
            ColumnData::Str { values: x.as_str_iter()?.map(|s| (!s.is_na()).then(|| s.to_string())).collect() }
        }
        _ => return None,
    })
}

/// Reads a part scorer's answer: `list(mean = <double per row>)` for a regression forest
/// (`NA`/`NaN` become `None`), `list(votes = <integer matrix, rows x classes>)` for a
/// classification forest (`NA` counts as no vote). Checks the shape rather than trust it.
pub fn forest_part(
    x: &Robj,
    n_rows: usize,
    n_trees: u32,
    classes: Option<&[String]>,
) -> std::result::Result<ForestPart, String> {
    let fields = fields(&x.as_list().ok_or("the part scorer did not answer a list")?);
    match (classes, fields.get("mean"), fields.get("votes")) {
        (None, Some(mean), None) => {
            let mean = mean.as_real_slice().ok_or("the part's means are not doubles")?;
            if mean.len() != n_rows {
                return Err(format!("the part has {} means for {n_rows} rows", mean.len()));
            }
            Ok(ForestPart::Regression { n_trees, mean: mean.iter().map(|v| (!v.is_nan()).then_some(*v)).collect() })
        }
        (Some(classes), None, Some(votes)) => {
            let votes = votes.as_integer_slice().ok_or("the part's votes are not integers")?;
            if votes.len() != n_rows * classes.len() {
                return Err(format!(
                    "the part has {} votes for {n_rows} rows and {} classes",
                    votes.len(),
                    classes.len()
                ));
            }
            // An R matrix is column-major: each class's column is one contiguous run.
            let votes = if n_rows == 0 {
                vec![Vec::new(); classes.len()]
            } else {
                votes
                    .chunks(n_rows)
                    .map(|class| class.iter().map(|&v| u32::try_from(v).unwrap_or(0)).collect())
                    .collect()
            };
            Ok(ForestPart::Votes { n_trees, classes: classes.to_vec(), votes })
        }
        _ => Err(format!(
            "the part scorer answered {:?} for a {} forest",
            fields.keys().collect::<Vec<_>>(),
            if classes.is_some() { "classification" } else { "regression" }
        )),
    }
}

/// Reads `.rfleet_schema()`'s answer: `NULL`, or `list(name = chr, type = chr, levels =
/// list(chr or NULL))`.
pub fn schema_from_r(x: &Robj) -> std::result::Result<Option<Schema>, String> {
    if x.is_null() {
        return Ok(None);
    }
    let fields = fields(&x.as_list().ok_or("the inferred schema is not a list")?);
    let strings = |key: &str| -> std::result::Result<Vec<String>, String> {
        fields
            .get(key)
            .and_then(|v| v.as_string_vector())
            .ok_or_else(|| format!("the inferred schema has no '{key}' strings"))
    };
    let names = strings("name")?;
    let types = strings("type")?;
    let levels = fields.get("levels").and_then(|v| v.as_list()).ok_or("the inferred schema has no levels list")?;
    if types.len() != names.len() || levels.len() != names.len() {
        return Err("the inferred schema's fields differ in length".into());
    }
    let columns = names
        .into_iter()
        .zip(types)
        .zip(levels.values())
        .map(|((name, type_name), levels)| {
            let column_type = match type_name.as_str() {
                "numeric" => ColumnType::Numeric,
                "integer" => ColumnType::Integer,
                "logical" => ColumnType::Logical,
                "character" => ColumnType::Character,
                "factor" => ColumnType::Factor,
                "ordered" => ColumnType::Ordered,
                other => return Err(format!("column '{name}' has unknown type '{other}'")),
            };
            Ok(ColumnSpec { name, column_type, levels: levels.as_string_vector() })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(Some(Schema { columns }))
}

/// A named R list's elements by name.
pub fn fields(list: &List) -> HashMap<String, Robj> {
    list.iter().map(|(name, value)| (name.to_string(), value)).collect()
}
