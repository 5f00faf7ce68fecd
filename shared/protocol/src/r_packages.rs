//! Which R package a model's classes come from: the one table behind vetiver's
//! `required_pkgs` (`GET /metadata`) and the R packages `rfleet package` installs in a
//! model image.
//!
//! A class of unknown origin maps to nothing rather than to a guess: a guess would
//! install (or announce) a package the model may not need.

/// R packages that ship with R itself (`installed.packages(priority = "base")`): they
/// need no installing.
pub const BASE_PACKAGES: [&str; 14] = [
    "base",
    "compiler",
    "datasets",
    "graphics",
    "grDevices",
    "grid",
    "methods",
    "parallel",
    "splines",
    "stats",
    "stats4",
    "tcltk",
    "tools",
    "utils",
];

/// The R package that defines `class`, for the classes of the models rfleet is used with.
pub fn package_of_class(class: &str) -> Option<&'static str> {
    Some(match class {
        "randomForest" | "randomForest.formula" => "randomForest",
        "ranger" => "ranger",
        "lm" | "glm" | "mlm" | "nls" | "loess" => "stats",
        "rpart" => "rpart",
        "gbm" => "gbm",
        "train" | "train.formula" => "caret",
        "glmnet" | "elnet" | "lognet" | "multnet" | "cv.glmnet" => "glmnet",
        "svm" | "svm.formula" | "naiveBayes" => "e1071",
        "lda" | "qda" | "polr" | "rlm" | "glm.nb" => "MASS",
        "xgb.Booster" => "xgboost",
        "workflow" => "workflows",
        "model_fit" => "parsnip",
        _ => return None,
    })
}

/// The R packages whose classes appear in `class(model)`, each once, in class order.
pub fn required_pkgs(r_class: &[String]) -> Vec<String> {
    let mut packages: Vec<String> = Vec::new();
    for package in r_class.iter().filter_map(|class| package_of_class(class)) {
        if !packages.iter().any(|p| p == package) {
            packages.push(package.to_string());
        }
    }
    packages
}

/// Whether `package` comes with R (see [`BASE_PACKAGES`]).
pub fn is_base(package: &str) -> bool {
    BASE_PACKAGES.contains(&package)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_to_packages() {
        let classes = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(required_pkgs(&classes(&["randomForest.formula", "randomForest"])), ["randomForest"]);
        assert_eq!(required_pkgs(&classes(&["glm", "lm"])), ["stats"]);
        assert_eq!(required_pkgs(&classes(&["_lm", "model_fit"])), ["parsnip"]);
        assert!(required_pkgs(&classes(&["my_own_class"])).is_empty());
        assert!(is_base("stats") && is_base("grDevices") && !is_base("MASS") && !is_base("Stats"));
    }
}
