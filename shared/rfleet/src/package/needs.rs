//! The R packages a model needs, and where a model image gets each from: from its
//! classes (`protocol::r_packages`, the table vetiver's `required_pkgs` reads too), from
//! what its R files load or call, and from `--r-package`; then R itself, the worker
//! image, Debian bookworm's `r-cran-*` packages, or the `--from` image (`--provided`).

use std::fmt;

use protocol::r_packages::{is_base, package_of_class};

/// Debian bookworm's `r-cran-*` package names, sorted (written by `bookworm-r-cran.sh`).
const BOOKWORM_R_CRAN: &str = include_str!("bookworm-r-cran.txt");

/// The set-up script whose `R_PACKAGES` the worker image installs: read here, so the
/// list lives in one place and a model image never installs what its base already has.
const SETUP_SH: &str = include_str!("../../../../deploy/setup.sh");

/// Why a model needs an R package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// One of the model's classes (`class(model)`) comes from it.
    Class(String),
    /// An R file of the package (`score.R`, or a file it sources) loads it or calls into
    /// it: the file, the line and what it says there.
    Script { file: String, line: usize, says: String },
    /// `--r-package` names it.
    Flag,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Class(class) => write!(f, "class {class}"),
            Reason::Script { file, line, says } => write!(f, "{file}:{line} {says}"),
            Reason::Flag => f.write_str("--r-package"),
        }
    }
}

/// An R package a model needs, with the first reason found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub package: String,
    pub reason: Reason,
}

/// The R packages a model needs, each once, in the order found: its classes, its R
/// files (`(file name, code)`: `score.R` first, then any it may source), then the
/// `--r-package` extras.
pub fn needs_of(r_class: &[String], r_files: &[(String, String)], extras: &[String]) -> Vec<Need> {
    let mut needs: Vec<Need> = Vec::new();
    let mut add = |package: &str, reason: Reason| {
        if !needs.iter().any(|need| need.package == package) {
            needs.push(Need { package: package.to_string(), reason });
        }
    };
    for class in r_class {
        if let Some(package) = package_of_class(class) {
            add(package, Reason::Class(class.clone()));
        }
    }
    for (file, code) in r_files {
        for (package, line, says) in script_packages(code) {
            add(&package, Reason::Script { file: file.clone(), line, says });
        }
    }
    for package in extras {
        add(package, Reason::Flag);
    }
    needs
}

/// Whether `name` is a valid R package name: letters, digits and dots, starting with a
/// letter, not ending with a dot, at least two characters.
pub fn is_package_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_alphabetic()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'.')
        && !name.ends_with('.')
}

/// A token of R code, with its line; comments are dropped.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A name, bare or in backticks.
    Name(String),
    /// A string literal's contents.
    Text(String),
    /// A run of colons (`::` is 2, `:::` is 3).
    Colons(usize),
    Open,
    Close,
    Equals,
    /// Anything else: numbers, operators, brackets other than round ones.
    Other,
}

/// R code as tokens: enough of R's lexer to tell code from strings and comments, so that
/// `"a::b"` in a string or `# library(x)` in a comment is not taken for a package.
fn tokens(code: &str) -> Vec<(Token, usize)> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        let start_line = line;
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '"' | '\'' | '`' => {
                let mut text = String::new();
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    text.push(chars[i]);
                    i += 1;
                }
                i += 1;
                out.push((if c == '`' { Token::Name(text) } else { Token::Text(text) }, start_line));
            }
            ':' => {
                let run = chars[i..].iter().take_while(|&&c| c == ':').count();
                i += run;
                out.push((Token::Colons(run), start_line));
            }
            '(' | ')' => {
                i += 1;
                out.push((if c == '(' { Token::Open } else { Token::Close }, start_line));
            }
            '=' if chars.get(i + 1) != Some(&'=') => {
                i += 1;
                out.push((Token::Equals, start_line));
            }
            c if c.is_alphabetic() || c == '.' || c.is_ascii_digit() => {
                let word: String =
                    chars[i..].iter().take_while(|c| c.is_alphanumeric() || **c == '.' || **c == '_').collect();
                i += word.chars().count();
                // A number (`1.5`, `2e3`) is no name.
                let number = word.starts_with(|c: char| c.is_ascii_digit())
                    || (word.starts_with('.') && word[1..].starts_with(|c: char| c.is_ascii_digit()));
                out.push((if number { Token::Other } else { Token::Name(word) }, start_line));
            }
            c if c.is_whitespace() => i += 1,
            _ => {
                i += 1;
                out.push((Token::Other, start_line));
            }
        }
    }
    out
}

/// The functions whose first argument names a package they load.
const LOADERS: [&str; 4] = ["library", "require", "requireNamespace", "loadNamespace"];

/// The packages `code` loads (`library(x)`, `require("x")`, `requireNamespace("x")`,
/// `loadNamespace("x")`) or calls into (`x::f`, `x:::f`), each with its line and the code
/// that says so. A loader given a variable (`library(p, character.only = TRUE)`) names no
/// package here: which one is known only when it runs.
pub fn script_packages(code: &str) -> Vec<(String, usize, String)> {
    let tokens = tokens(code);
    let mut found = Vec::new();
    for (at, (token, line)) in tokens.iter().enumerate() {
        let Token::Name(name) = token else { continue };
        let next = |k: usize| tokens.get(at + k).map(|(t, _)| t);
        // `pkg::name` or `pkg:::name`, but not the `name` after the colons.
        let after_colons = at > 0 && matches!(tokens[at - 1].0, Token::Colons(2 | 3));
        if let (Some(Token::Colons(n @ (2 | 3))), Some(Token::Name(member)), false) = (next(1), next(2), after_colons) {
            found.push((name.clone(), *line, format!("{name}{}{member}", ":".repeat(*n))));
            continue;
        }
        if !LOADERS.contains(&name.as_str())
            || after_colons && !is_base_call(&tokens, at)
            || next(1) != Some(&Token::Open)
        {
            continue;
        }
        // The first argument, past a `package =` naming it.
        let mut first = at + 2;
        if matches!(tokens.get(first), Some((Token::Name(arg), _)) if arg == "package")
            && matches!(tokens.get(first + 1), Some((Token::Equals, _)))
        {
            first += 2;
        }
        let call_end = closing(&tokens, at + 1);
        let character_only =
            tokens[at..call_end].iter().any(|(t, _)| matches!(t, Token::Name(n) if n == "character.only"));
        let package = match tokens.get(first).map(|(t, _)| t) {
            Some(Token::Text(package)) => package,
            Some(Token::Name(package)) if !character_only => package,
            _ => continue,
        };
        let quote = if matches!(tokens[first].0, Token::Text(_)) { "\"" } else { "" };
        found.push((package.clone(), *line, format!("{name}({quote}{package}{quote})")));
    }
    found.retain(|(package, ..)| is_package_name(package));
    found
}

/// Whether the loader at `at` is called as `base::library(...)` (qualified by base, which
/// is the same function), rather than some other package's function of that name.
fn is_base_call(tokens: &[(Token, usize)], at: usize) -> bool {
    at >= 2 && matches!(&tokens[at - 2].0, Token::Name(package) if package == "base")
}

/// The index just past the parenthesis that closes the one at `open`.
fn closing(tokens: &[(Token, usize)], open: usize) -> usize {
    let mut depth = 0usize;
    for (i, (token, _)) in tokens.iter().enumerate().skip(open) {
        match token {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// Debian's name of an R package from CRAN.
pub fn debian_name(package: &str) -> String {
    format!("r-cran-{}", package.to_lowercase())
}

/// Whether Debian bookworm has `debian` (an `r-cran-*` name).
pub fn in_bookworm(debian: &str) -> bool {
    BOOKWORM_R_CRAN.lines().filter(|line| !line.starts_with('#')).any(|line| line == debian)
}

/// The `r-cran-*` packages the worker image installs: `R_PACKAGES` in `deploy/setup.sh`.
pub fn worker_image_packages() -> Vec<&'static str> {
    let start = SETUP_SH.find("\nR_PACKAGES=(").expect("deploy/setup.sh defines R_PACKAGES=(...)") + 1;
    let list = &SETUP_SH[start + "R_PACKAGES=(".len()..];
    let list = &list[..list.find(')').expect("R_PACKAGES=( ends with )")];
    list.split_whitespace().filter(|name| name.starts_with("r-cran-")).collect()
}

/// Where a model image gets an R package from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// It comes with R.
    Base,
    /// The worker image installs this `r-cran-*` package already.
    WorkerImage(String),
    /// The model image installs this `r-cran-*` package from Debian.
    Debian(String),
    /// `--provided`: the `--from` image has it (the build checks that it loads).
    Provided,
    /// Nowhere: Debian bookworm does not package it.
    Missing(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Base => f.write_str("base R, nothing to install"),
            Source::WorkerImage(debian) => write!(f, "{debian}, in the worker image"),
            Source::Debian(debian) => write!(f, "{debian}, installed from Debian bookworm"),
            Source::Provided => f.write_str("provided by the --from image (--provided)"),
            Source::Missing(debian) => write!(f, "not in Debian bookworm (no {debian})"),
        }
    }
}

/// Where `package` comes from, given what the `--from` image is said to provide.
pub fn source_of(package: &str, provided: &[String]) -> Source {
    if is_base(package) {
        return Source::Base;
    }
    if provided.iter().any(|p| p == package) {
        return Source::Provided;
    }
    let debian = debian_name(package);
    if worker_image_packages().contains(&debian.as_str()) {
        Source::WorkerImage(debian)
    } else if in_bookworm(&debian) {
        Source::Debian(debian)
    } else {
        Source::Missing(debian)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packages `code` names, as `package line says`.
    fn check(code: &str, expected: &[&str]) {
        let found: Vec<String> =
            script_packages(code).into_iter().map(|(package, line, says)| format!("{package} {line} {says}")).collect();
        assert_eq!(found, expected, "in:\n{code}");
    }

    #[test]
    fn score_scripts() {
        check("library(glmnet)\nrequire('e1071')", &["glmnet 1 library(glmnet)", "e1071 2 require(\"e1071\")"]);
        check(
            "df <- jsonlite::fromJSON(data)\nx <- stats:::predict.lm",
            &["jsonlite 1 jsonlite::fromJSON", "stats 2 stats:::predict.lm"],
        );
        check(
            "if (!requireNamespace(\"ranger\", quietly = TRUE)) stop()\nloadNamespace(package = \"gbm\")",
            &["ranger 1 requireNamespace(\"ranger\")", "gbm 2 loadNamespace(\"gbm\")"],
        );
        check("suppressPackageStartupMessages(library(caret))", &["caret 1 library(caret)"]);
        check("base::library(rpart)", &["base 1 base::library", "rpart 1 library(rpart)"]);
        // Comments, strings and variables name no package.
        check("# library(xgboost)\nx <- \"a::b\" # c::d\nlibrary(p, character.only = TRUE)", &[]);
        check("msg <- 'it\\'s library(foo)'\n`my var` <- 1", &[]);
        // Only a valid package name counts (two characters at least, no leading dot);
        // spaces around `::` do not hide one.
        check("library(.hidden)\nf <- ab ::c\ng <- x::y", &["ab 2 ab::c"]);
        // A function of another package called `library` loads nothing.
        check("mypkg::library(other)", &["mypkg 1 mypkg::library"]);
        // Numbers are not names; multi-line strings keep the line count.
        check("x <- 1.5e3\ns <- 'one\ntwo'\nlibrary(MASS)", &["MASS 4 library(MASS)"]);
    }

    #[test]
    fn needs_in_order_once() {
        let classes = vec!["randomForest.formula".to_string(), "randomForest".to_string()];
        let files = [
            ("score.R".to_string(), "library(randomForest)\nglmnet::glmnet".to_string()),
            ("R/helpers.R".to_string(), "\n\nlibrary(glmnet)\nlibrary(e1071)".to_string()),
        ];
        let needs = needs_of(&classes, &files, &["MASS".into(), "e1071".into()]);
        let seen: Vec<String> = needs.iter().map(|n| format!("{} <- {}", n.package, n.reason)).collect();
        assert_eq!(
            seen,
            [
                "randomForest <- class randomForest.formula",
                "glmnet <- score.R:2 glmnet::glmnet",
                "e1071 <- R/helpers.R:4 library(e1071)",
                "MASS <- --r-package"
            ]
        );
    }

    #[test]
    fn sources() {
        let check = |package: &str, provided: &[&str], expected: Source| {
            let provided: Vec<String> = provided.iter().map(|p| p.to_string()).collect();
            assert_eq!(source_of(package, &provided), expected, "{package}");
        };
        check("stats", &[], Source::Base);
        check("randomForest", &[], Source::WorkerImage("r-cran-randomforest".into()));
        check("MASS", &[], Source::WorkerImage("r-cran-mass".into()));
        check("data.table", &[], Source::Debian("r-cran-data.table".into()));
        check("survival", &[], Source::Debian("r-cran-survival".into()));
        for missing in ["xgboost", "parsnip", "workflows"] {
            check(missing, &[], Source::Missing(format!("r-cran-{missing}")));
        }
        check("xgboost", &["xgboost"], Source::Provided);
    }

    #[test]
    fn the_lists_read_as_expected() {
        // deploy/setup.sh's R_PACKAGES, as the worker image installs them.
        let worker = worker_image_packages();
        for expected in ["r-cran-randomforest", "r-cran-ranger", "r-cran-jsonlite", "r-cran-gbm", "r-cran-mass"] {
            assert!(worker.contains(&expected), "{expected} not in {worker:?}");
        }
        assert!(worker.iter().all(|p| in_bookworm(p)), "the worker image installs what bookworm has: {worker:?}");
        let names: Vec<&str> = BOOKWORM_R_CRAN.lines().filter(|l| !l.starts_with('#')).collect();
        assert!(names.len() > 1000, "bookworm has over a thousand r-cran packages, the list {}", names.len());
        assert!(names.windows(2).all(|w| w[0] < w[1]), "the list is sorted and has no twins");
        assert!(names.iter().all(|n| n.starts_with("r-cran-") && *n == n.to_lowercase()));
        assert!(is_package_name("data.table") && is_package_name("e1071") && !is_package_name("x"));
        assert!(!is_package_name("1abc") && !is_package_name("abc.") && !is_package_name("a_b"));
    }
}
