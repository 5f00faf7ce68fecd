//! The engine on hand-built forests whose answers can be worked out by hand.

use protocol::native::{NativeInput, NativeOutput, NativeTree, NATIVE_FORMAT};
use protocol::{Algorithm, Column, ColumnData, ColumnSpec, ColumnType, Frame, NativeForest, Schema};

use crate::{Declined, NativeModel, PARALLEL_ROWS};

fn number(name: &str) -> NativeInput {
    NativeInput { name: name.into(), levels: None, categorical: false, code_base: 0 }
}

fn factor(name: &str, levels: &[&str], categorical: bool, code_base: u32) -> NativeInput {
    NativeInput {
        name: name.into(),
        levels: Some(levels.iter().map(|l| l.to_string()).collect()),
        categorical,
        code_base,
    }
}

/// A stump: node 0 splits input `var` at `split`, leaves 1 (left) and 2 (right).
fn stump(var: i32, split: f64, left: f64, right: f64) -> NativeTree {
    NativeTree {
        var: vec![var, -1, -1],
        split: vec![split, 0.0, 0.0],
        left: vec![1, 0, 0],
        right: vec![2, 0, 0],
        value: vec![0.0, left, right],
        ..NativeTree::default()
    }
}

/// A gbm stump with a missing branch to leaf 3.
fn gbm_stump(var: i32, split: f64, values: [f64; 3]) -> NativeTree {
    NativeTree {
        var: vec![var, -1, -1, -1],
        split: vec![split, 0.0, 0.0, 0.0],
        left: vec![1, 0, 0, 0],
        right: vec![2, 0, 0, 0],
        missing: vec![3, 0, 0, 0],
        value: vec![0.0, values[0], values[1], values[2]],
        ..NativeTree::default()
    }
}

fn forest(
    algorithm: Algorithm,
    inputs: Vec<NativeInput>,
    trees: Vec<NativeTree>,
    output: NativeOutput,
) -> NativeForest {
    NativeForest { format: NATIVE_FORMAT, algorithm, package_version: "test".into(), inputs, trees, output }
}

fn compiled(forest: &NativeForest) -> NativeModel {
    NativeModel::compile(forest).expect("the forest compiles")
}

fn f64s(name: &str, values: &[Option<f64>]) -> Column {
    Column::new(name, ColumnData::F64 { values: values.to_vec() })
}

fn factors(name: &str, levels: &[&str], values: &[Option<u32>]) -> Column {
    Column::new(
        name,
        ColumnData::Factor {
            levels: levels.iter().map(|l| l.to_string()).collect(),
            values: values.to_vec(),
            ordered: false,
        },
    )
}

fn frame(columns: Vec<Column>) -> Frame {
    Frame::new(columns).expect("a valid frame")
}

/// The doubles of column `name` of a prediction.
fn doubles(frame: &Frame, name: &str) -> Vec<Option<f64>> {
    match &frame.column(name).expect("the column").data {
        ColumnData::F64 { values } => values.clone(),
        other => panic!("column {name} is {other:?}"),
    }
}

/// The labels of `.pred`, by name.
fn labels(frame: &Frame) -> Vec<String> {
    match &frame.column(".pred").expect(".pred").data {
        ColumnData::Factor { levels, values, .. } => {
            values.iter().map(|v| levels[v.unwrap() as usize].clone()).collect()
        }
        other => panic!(".pred is {other:?}"),
    }
}

/// One check: the forest answers `expected` doubles in `column` for `input` and `type`.
fn check(forest: &NativeForest, input: &Frame, predict_type: Option<&str>, column: &str, expected: &[Option<f64>]) {
    let answer = compiled(forest).predict(input, predict_type).expect("answered natively");
    let got = doubles(&answer.frame, column);
    let bits = |v: &[Option<f64>]| v.iter().map(|v| v.map(f64::to_bits)).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(expected), "{predict_type:?} {column}: got {got:?}, expected {expected:?}");
}

#[test]
fn numeric_splits_send_ties_left_in_random_forest_and_ranger_but_right_in_gbm() {
    let x = frame(vec![f64s("x", &[Some(0.5), Some(1.0), Some(1.5)])]);
    for algorithm in [Algorithm::RandomForest, Algorithm::Ranger] {
        let f =
            forest(algorithm, vec![number("x")], vec![stump(0, 1.0, 10.0, 20.0)], NativeOutput::Mean { bias: None });
        check(&f, &x, None, ".pred", &[Some(10.0), Some(10.0), Some(20.0)]);
    }
    let boosted = NativeOutput::Boosted { init: 0.0, distribution: "gaussian".into() };
    let f = forest(Algorithm::Gbm, vec![number("x")], vec![gbm_stump(0, 1.0, [10.0, 20.0, 30.0])], boosted);
    check(&f, &x, Some("link"), ".pred", &[Some(10.0), Some(20.0), Some(20.0)]);
}

#[test]
fn a_mean_sums_trees_in_order_from_zero_then_divides_and_applies_the_bias() {
    let trees = vec![stump(0, 0.0, 0.1, 1.0), stump(0, 0.0, 0.2, 1.0), stump(0, 0.0, 0.3, 1.0)];
    let x = frame(vec![f64s("x", &[Some(-1.0)])]);
    let plain = forest(Algorithm::RandomForest, vec![number("x")], trees.clone(), NativeOutput::Mean { bias: None });
    let mean = ((0.0 + 0.1) + 0.2 + 0.3) / 3.0;
    check(&plain, &x, None, ".pred", &[Some(mean)]);
    check(&plain, &x, Some("response"), ".pred", &[Some(mean)]);
    let biased =
        forest(Algorithm::RandomForest, vec![number("x")], trees, NativeOutput::Mean { bias: Some([0.5, 2.0]) });
    check(&biased, &x, None, ".pred", &[Some(0.5 + 2.0 * mean)]);
}

#[test]
fn categorical_splits_follow_their_directions_by_level_name() {
    // Levels a and c go left; the frame lists the model's levels in another order.
    let mut tree = stump(0, 0.0, 1.0, 2.0);
    tree.sets = vec![vec![-1, 1, -1]];
    let f = forest(
        Algorithm::RandomForest,
        vec![factor("g", &["a", "b", "c"], true, 1)],
        vec![tree],
        NativeOutput::Mean { bias: None },
    );
    let x = frame(vec![factors("g", &["c", "b", "a"], &[Some(0), Some(1), Some(2)])]);
    check(&f, &x, None, ".pred", &[Some(1.0), Some(2.0), Some(1.0)]);
}

#[test]
fn a_categorical_split_of_more_than_64_levels_and_a_gbm_threshold_of_minus_infinity_take_the_slow_path() {
    // 70 levels: only the last goes right, past what one node's mask holds.
    let names: Vec<String> = (0..70).map(|i| format!("l{i}")).collect();
    let levels: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut tree = stump(0, 0.0, 1.0, 2.0);
    tree.sets = vec![(0..70).map(|i| if i == 69 { 1 } else { -1 }).collect()];
    let f = forest(
        Algorithm::RandomForest,
        vec![factor("g", &levels, true, 1)],
        vec![tree],
        NativeOutput::Mean { bias: None },
    );
    let x = frame(vec![factors("g", &levels, &[Some(0), Some(64), Some(69), Some(5)])]);
    check(&f, &x, None, ".pred", &[Some(1.0), Some(1.0), Some(2.0), Some(1.0)]);

    // gbm goes left on `x < split`: nothing is below minus infinity, a value just above
    // a threshold goes right and the threshold itself goes right.
    let boosted = NativeOutput::Boosted { init: 0.0, distribution: "gaussian".into() };
    let trees = vec![gbm_stump(0, f64::NEG_INFINITY, [1.0, 2.0, 3.0]), gbm_stump(0, 1.0, [10.0, 20.0, 30.0])];
    let g = forest(Algorithm::Gbm, vec![number("x")], trees, boosted);
    let x =
        frame(vec![f64s("x", &[Some(f64::NEG_INFINITY), Some(1.0f64.next_down()), Some(1.0), Some(f64::INFINITY)])]);
    check(&g, &x, Some("link"), ".pred", &[Some(2.0 + 10.0), Some(2.0 + 10.0), Some(2.0 + 20.0), Some(2.0 + 20.0)]);
}

#[test]
fn ordered_factors_compare_their_codes_from_the_code_base() {
    // randomForest and ranger count codes from 1: level b is 2, so `2 <= 1.5` is false.
    let f = forest(
        Algorithm::Ranger,
        vec![factor("g", &["a", "b", "c"], false, 1)],
        vec![stump(0, 1.5, 1.0, 2.0)],
        NativeOutput::Mean { bias: None },
    );
    let x = frame(vec![factors("g", &["a", "b", "c"], &[Some(0), Some(1), Some(2)])]);
    check(&f, &x, None, ".pred", &[Some(1.0), Some(2.0), Some(2.0)]);
    // gbm counts from 0: level b is 1, and `1 < 1.5` goes left.
    let boosted = NativeOutput::Boosted { init: 0.0, distribution: "gaussian".into() };
    let g = forest(
        Algorithm::Gbm,
        vec![factor("g", &["a", "b", "c"], false, 0)],
        vec![gbm_stump(0, 1.5, [1.0, 2.0, 3.0])],
        boosted,
    );
    check(&g, &x, Some("link"), ".pred", &[Some(1.0), Some(1.0), Some(2.0)]);
}

#[test]
fn gbm_takes_the_missing_branch_for_a_missing_value_an_unknown_level_and_a_level_without_direction() {
    let boosted = NativeOutput::Boosted { init: 0.5, distribution: "gaussian".into() };
    let numeric = forest(Algorithm::Gbm, vec![number("x")], vec![gbm_stump(0, 1.0, [1.0, 2.0, 3.0])], boosted.clone());
    check(&numeric, &frame(vec![f64s("x", &[Some(0.0), None])]), Some("link"), ".pred", &[Some(1.5), Some(3.5)]);

    let mut tree = gbm_stump(0, 0.0, [1.0, 2.0, 3.0]);
    tree.sets = vec![vec![-1, 1, 0]];
    let categorical = forest(Algorithm::Gbm, vec![factor("g", &["a", "b", "c"], true, 0)], vec![tree], boosted);
    let x = frame(vec![factors("g", &["a", "b", "c", "new"], &[Some(0), Some(1), Some(2), Some(3), None])]);
    check(&categorical, &x, Some("link"), ".pred", &[Some(1.5), Some(2.5), Some(3.5), Some(3.5), Some(3.5)]);
}

#[test]
fn gbm_answers_the_link_and_the_response_of_each_distribution() {
    let x = frame(vec![f64s("x", &[Some(0.0), Some(2.0)])]);
    let trees = vec![gbm_stump(0, 1.0, [0.25, -0.75, 0.0]), gbm_stump(0, 1.0, [0.125, 0.5, 0.0])];
    let link = [(-0.5 + 0.25) + 0.125, (-0.5 - 0.75) + 0.5];
    for (distribution, response) in [
        ("gaussian", link),
        ("bernoulli", link.map(|f: f64| 1.0 / (1.0 + (-f).exp()))),
        ("poisson", link.map(f64::exp)),
    ] {
        let f = forest(
            Algorithm::Gbm,
            vec![number("x")],
            trees.clone(),
            NativeOutput::Boosted { init: -0.5, distribution: distribution.into() },
        );
        check(&f, &x, Some("link"), ".pred", &link.map(Some));
        check(&f, &x, Some("response"), ".pred", &response.map(Some));
        check(&f, &x, None, ".pred", &link.map(Some));
    }
}

/// Three randomForest trees voting on classes x, y, z: for `v < 0` all three vote x; for
/// `0 <= v < 1` x, y, z (a tie); from 1 on y, y, z.
fn votes_forest(cutoff: Vec<f64>) -> NativeForest {
    let classes = vec!["x".to_string(), "y".to_string(), "z".to_string()];
    forest(
        Algorithm::RandomForest,
        vec![number("v")],
        vec![stump(0, -0.5, 1.0, 2.0), stump(0, 0.5, 1.0, 2.0), stump(0, -0.5, 1.0, 3.0)],
        NativeOutput::Votes { classes, cutoff },
    )
}

#[test]
fn random_forest_votes_answer_labels_with_cutoffs_and_normalized_votes() {
    let x = frame(vec![f64s("v", &[Some(-1.0), Some(0.0), Some(1.0)])]);
    let even = compiled(&votes_forest(vec![1.0 / 3.0; 3]));
    for predict_type in [None, Some("response"), Some("class")] {
        let answer = even.predict(&x, predict_type).unwrap();
        assert_eq!(labels(&answer.frame), ["x", "x", "y"], "{predict_type:?}");
        assert_eq!(answer.ties, [1], "row 1 votes x, y, z once each");
    }
    let f = votes_forest(vec![1.0 / 3.0; 3]);
    for predict_type in ["prob", "vote"] {
        check(&f, &x, Some(predict_type), "x", &[Some(1.0), Some(1.0 / 3.0), Some(0.0)]);
        check(&f, &x, Some(predict_type), "y", &[Some(0.0), Some(1.0 / 3.0), Some(2.0 / 3.0)]);
        check(&f, &x, Some(predict_type), "z", &[Some(0.0), Some(1.0 / 3.0), Some(1.0 / 3.0)]);
    }
    // A small cutoff for z makes its single vote the largest `votes / ntree / cutoff`.
    let unequal = compiled(&votes_forest(vec![0.45, 0.45, 0.1]));
    let answer = unequal.predict(&x, None).unwrap();
    assert_eq!(labels(&answer.frame), ["x", "z", "z"]);
    assert!(answer.ties.is_empty());
}

#[test]
fn ranger_majorities_and_distributions() {
    let classes: Vec<String> = ["a", "b"].iter().map(|c| c.to_string()).collect();
    let trees = vec![stump(0, 0.0, 1.0, 2.0), stump(0, 1.0, 1.0, 2.0)];
    let majority =
        forest(Algorithm::Ranger, vec![number("v")], trees, NativeOutput::Majority { classes: classes.clone() });
    let x = frame(vec![f64s("v", &[Some(-1.0), Some(0.5), Some(2.0)])]);
    let answer = compiled(&majority).predict(&x, None).unwrap();
    assert_eq!(labels(&answer.frame), ["a", "a", "b"]);
    assert_eq!(answer.ties, [1]);

    let mut first = stump(0, 0.0, 0.0, 0.0);
    first.distribution = vec![vec![], vec![0.25, 0.75], vec![1.0, 0.0]];
    let mut second = stump(0, 1.0, 0.0, 0.0);
    second.distribution = vec![vec![], vec![0.5, 0.5], vec![0.1, 0.9]];
    let probability =
        forest(Algorithm::Ranger, vec![number("v")], vec![first, second], NativeOutput::Distribution { classes });
    check(&probability, &x, None, "a", &[Some((0.25 + 0.5) / 2.0), Some((1.0 + 0.5) / 2.0), Some((1.0 + 0.1) / 2.0)]);
    check(&probability, &x, Some("response"), "b", &[Some(0.625), Some(0.25), Some((0.0 + 0.9) / 2.0)]);
}

#[test]
fn integer_and_logical_columns_read_as_doubles() {
    let f = forest(
        Algorithm::RandomForest,
        vec![number("i"), number("b")],
        vec![stump(0, 2.0, 1.0, 2.0), stump(1, 0.5, 10.0, 20.0)],
        NativeOutput::Mean { bias: None },
    );
    let x = frame(vec![
        Column::new("i", ColumnData::I32 { values: vec![Some(2), Some(3)] }),
        Column::new("b", ColumnData::Bool { values: vec![Some(false), Some(true)] }),
    ]);
    check(&f, &x, None, ".pred", &[Some(11.0 / 2.0), Some(22.0 / 2.0)]);
}

#[test]
fn many_rows_in_parallel_answer_what_each_row_answers_alone() {
    let trees: Vec<NativeTree> = (0..50).map(|t| stump(t % 2, f64::from(t) / 50.0, f64::from(t) * 0.1, 0.3)).collect();
    let f = forest(Algorithm::Ranger, vec![number("a"), number("b")], trees, NativeOutput::Mean { bias: None });
    let model = compiled(&f);
    let n = PARALLEL_ROWS * 20 + 7;
    let values = |k: usize| (0..n).map(|r| Some(((r * k) % 101) as f64 / 100.0)).collect::<Vec<_>>();
    let x = frame(vec![f64s("a", &values(7)), f64s("b", &values(13))]);
    let all = doubles(&model.predict(&x, None).unwrap().frame, ".pred");
    for (row, expected) in all.iter().enumerate() {
        let one = frame(vec![f64s("a", &values(7)[row..=row]), f64s("b", &values(13)[row..=row])]);
        let alone = doubles(&model.predict(&one, None).unwrap().frame, ".pred");
        assert_eq!(alone[0].map(f64::to_bits), expected.map(f64::to_bits), "row {row}");
    }
}

#[test]
fn malformed_forests_do_not_compile() {
    let mean = NativeOutput::Mean { bias: None };
    let check_error = |f: NativeForest, expected: &str| {
        let error = NativeModel::compile(&f).err().expect("a compile error").0;
        assert!(error.contains(expected), "{error:?} does not say {expected:?}");
    };
    let mut out_of_range = stump(0, 0.0, 1.0, 2.0);
    out_of_range.right[0] = 3;
    check_error(forest(Algorithm::RandomForest, vec![number("x")], vec![out_of_range], mean.clone()), "out of range");
    let mut backwards = stump(0, 0.0, 1.0, 2.0);
    backwards.left[0] = 0;
    check_error(forest(Algorithm::RandomForest, vec![number("x")], vec![backwards], mean.clone()), "out of range");
    let mut one_child = stump(0, 0.0, 1.0, 2.0);
    one_child.right[0] = 1;
    check_error(forest(Algorithm::RandomForest, vec![number("x")], vec![one_child], mean.clone()), "two splits");
    check_error(
        forest(Algorithm::RandomForest, vec![number("x")], vec![stump(1, 0.0, 1.0, 2.0)], mean.clone()),
        "input 1",
    );
    let categorical = vec![factor("g", &["a", "b"], true, 1)];
    check_error(
        forest(Algorithm::RandomForest, categorical.clone(), vec![stump(0, 0.0, 1.0, 2.0)], mean.clone()),
        "set 0",
    );
    let mut short = stump(0, 0.0, 1.0, 2.0);
    short.sets = vec![vec![-1]];
    check_error(
        forest(Algorithm::RandomForest, categorical, vec![short], mean.clone()),
        "1 directions for the 2 levels",
    );
    let votes = NativeOutput::Votes { classes: vec!["a".into()], cutoff: vec![1.0] };
    check_error(
        forest(Algorithm::RandomForest, vec![number("x")], vec![stump(0, 0.0, 1.0, 2.0)], votes),
        "class 2 of 1",
    );
    check_error(
        forest(Algorithm::Gbm, vec![number("x")], vec![stump(0, 0.0, 1.0, 2.0)], mean.clone()),
        "does not answer",
    );
    let boosted = NativeOutput::Boosted { init: 0.0, distribution: "gaussian".into() };
    check_error(forest(Algorithm::Gbm, vec![number("x")], vec![stump(0, 0.0, 1.0, 2.0)], boosted), "missing branches");
    check_error(forest(Algorithm::Ranger, vec![number("x")], vec![], mean.clone()), "no trees");
    let mut stale = forest(Algorithm::Ranger, vec![number("x")], vec![stump(0, 0.0, 1.0, 2.0)], mean);
    stale.format = NATIVE_FORMAT + 1;
    check_error(stale, "format");
}

#[test]
fn requests_the_engine_cannot_answer_as_r_would_are_declined() {
    let f = forest(
        Algorithm::RandomForest,
        vec![number("x")],
        vec![stump(0, 0.0, 1.0, 2.0)],
        NativeOutput::Mean { bias: None },
    );
    let model = compiled(&f);
    let declined = |x: &Frame, predict_type: Option<&str>| model.predict(x, predict_type).expect_err("declined").0;
    let with_na = frame(vec![f64s("x", &[Some(1.0), None])]);
    assert!(declined(&with_na, None).contains("missing value in row 2"));
    assert!(declined(&frame(vec![f64s("x", &[Some(1.0)])]), Some("prob")).contains("type 'prob'"));
    let text = frame(vec![Column::new("x", ColumnData::Str { values: vec![Some("1".into())] })]);
    assert!(declined(&text, None).contains("is str"));
    assert!(declined(&frame(vec![f64s("y", &[Some(1.0)])]), None).contains("no column 'x'"));
    assert!(declined(&frame(vec![f64s("x", &[Some(f64::NAN)])]), None).contains("NaN"));
    assert_eq!(model.types(), ["response"]);
    let _: &Declined = &model.predict(&with_na, None).unwrap_err();
}

#[test]
fn the_footprint_counts_trees_nodes_and_bytes() {
    let f = votes_forest(vec![1.0 / 3.0; 3]);
    let footprint = compiled(&f).footprint();
    assert_eq!((footprint.trees, footprint.nodes), (3, 9));
    assert!(footprint.bytes >= 9 * (16 + 8), "{footprint:?}");
}

#[test]
fn samples_conform_cover_thresholds_and_levels_and_repeat_for_a_seed() {
    let mut tree = gbm_stump(0, 0.0, [1.0, 2.0, 3.0]);
    tree.sets = vec![vec![-1, 1, 0]];
    let mut second = gbm_stump(1, 2.5, [1.0, 2.0, 3.0]);
    second.sets = Vec::new();
    let f = forest(
        Algorithm::Gbm,
        vec![factor("g", &["a", "b", "c"], true, 0), number("x")],
        vec![tree, second],
        NativeOutput::Boosted { init: 0.0, distribution: "bernoulli".into() },
    );
    let model = compiled(&f);
    let schema = Schema {
        columns: vec![
            ColumnSpec {
                name: "g".into(),
                column_type: ColumnType::Factor,
                levels: Some(vec!["a".into(), "b".into(), "c".into()]),
            },
            ColumnSpec { name: "x".into(), column_type: ColumnType::Numeric, levels: None },
            ColumnSpec { name: "n".into(), column_type: ColumnType::Integer, levels: None },
        ],
    };
    let sample = model.sample(&schema, 200, 7);
    assert_eq!(sample, model.sample(&schema, 200, 7));
    assert_ne!(sample, model.sample(&schema, 200, 8));
    assert_eq!(protocol::conform(&sample, &schema).expect("conforms"), sample);
    let x = doubles(&sample, "x");
    for value in [2.5, 2.5f64.next_down(), 2.5f64.next_up()] {
        assert!(x.contains(&Some(value)), "{value} is in the sample");
    }
    assert!(x.contains(&None), "gbm samples hold missing values");
    match &sample.column("g").unwrap().data {
        ColumnData::Factor { values, .. } => {
            for code in [Some(0), Some(1), Some(2), None] {
                assert!(values.contains(&code), "{code:?}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(sample.column("n").unwrap().data, ColumnData::I32 { .. }));
    model.predict(&sample, Some("response")).expect("the sample is answered natively");
}

#[test]
fn a_compiled_forest_is_shared_by_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<NativeModel>();
}

/// The self-check on a stump: R's answers equal to the engine's pass; one ulp apart, a
/// refusal by R, or no schema to make rows from, fail and say why.
#[test]
fn the_self_check_passes_only_on_equal_bits() {
    let model = compiled(&forest(
        Algorithm::RandomForest,
        vec![number("x")],
        vec![stump(0, 0.5, 1.0, 2.0)],
        NativeOutput::Mean { bias: None },
    ));
    let schema =
        Schema { columns: vec![ColumnSpec { name: "x".into(), column_type: ColumnType::Numeric, levels: None }] };
    let rows = model.check_rows(Some(&schema)).expect("rows for the schema");
    assert_eq!((rows.frame.n_rows, rows.types.clone()), (crate::SELF_CHECK_ROWS, vec!["response".to_string()]));
    let r = model.predict(&rows.frame, Some("response")).unwrap().frame;
    let check = model.self_check(&rows, [Ok(r.clone())]);
    assert!(check.passed && check.mismatches == 0 && check.message.is_none(), "{check:?}");

    let mut off = r.clone();
    let ColumnData::F64 { values } = &mut off.columns[0].data else { panic!("a double column") };
    values[3] = values[3].map(|v| f64::from_bits(v.to_bits() + 1));
    let check = model.self_check(&rows, [Ok(off)]);
    assert_eq!((check.passed, check.mismatches), (false, 1), "{check:?}");
    assert!(check.message.as_deref().unwrap().contains("type 'response': column '.pred' row 4"), "{check:?}");

    let check = model.self_check(&rows, [Err("R refused the sample: boom".to_string())]);
    assert!(!check.passed && check.message.as_deref() == Some("type 'response': R refused the sample: boom"));
    let check = model.self_check(&rows, []);
    assert!(!check.passed && check.message.unwrap().contains("R was not asked"));
    let no_schema = model.check_rows(None).unwrap_err();
    assert!(!no_schema.passed && no_schema.message.unwrap().contains("no input schema"));
}
