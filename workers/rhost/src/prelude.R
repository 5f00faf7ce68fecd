# rfleet R host prelude: the R half of loading and scoring models (see src/main.rs docs).
#
# Sourced once into the global environment when the host starts. Every name starts with
# `.rfleet_` so it stays out of the way of models' own scripts. The Rust side calls
# `.rfleet_load()` once per model (and `.rfleet_native()` on the model it loaded, unless
# its forest is cached), then, per request, the scorer closure that `.rfleet_load()`
# returned. Nothing here parses R source at request time.
#
# `label` arguments are how messages name a model: "model 'rf_reg'", or "model 'rf_reg'
# version '2'" for a versioned package, since one host may hold several versions of a name.

# Warnings are printed as they happen (to stderr, which the supervisor logs) instead of
# piling up until a top level that an embedded R never reaches.
options(warn = 1, stringsAsFactors = FALSE)

.rfleet_r_version <- function() paste(R.version$major, R.version$minor, sep = ".")

# Packages whose namespace must be loaded for `predict` to dispatch on a model of this
# class: readRDS restores the object but not the S3 methods its package registers.
.rfleet_class_packages <- c(
  randomForest = "randomForest", ranger = "ranger", gbm = "gbm", rpart = "rpart",
  train = "caret", glmnet = "glmnet", cv.glmnet = "glmnet", elnet = "glmnet",
  lognet = "glmnet", svm = "e1071", naiveBayes = "e1071", negbin = "MASS",
  polr = "MASS", lda = "MASS", qda = "MASS", rlm = "MASS", gam = "mgcv",
  xgb.Booster = "xgboost", earth = "earth", nnet = "nnet", multinom = "nnet",
  C5.0 = "C50", cubist = "Cubist", ksvm = "kernlab", party = "partykit",
  BinaryTree = "party", RandomForest = "party", glmerMod = "lme4", lmerMod = "lme4"
)

.rfleet_attach_methods <- function(model) {
  for (cls in class(model)) {
    pkg <- .rfleet_class_packages[cls]
    if (is.na(pkg) && nzchar(system.file(package = cls))) pkg <- cls
    if (!is.na(pkg)) requireNamespace(pkg, quietly = TRUE)
  }
}

# --- schema inference ----------------------------------------------------------------

# One input column as list(name, type, levels) from a prototype vector; NULL when the
# vector's class is none of the six the wire knows.
.rfleet_spec_of <- function(name, x) {
  if (is.ordered(x)) return(list(name = name, type = "ordered", levels = levels(x)))
  if (is.factor(x)) return(list(name = name, type = "factor", levels = levels(x)))
  type <- if (is.logical(x)) "logical" else if (is.integer(x)) "integer"
    else if (is.numeric(x)) "numeric" else if (is.character(x)) "character" else NULL
  if (is.null(type)) NULL else list(name = name, type = type, levels = NULL)
}

# Columns from `terms`: the variables of the right-hand side, typed by `dataClasses`.
# A variable used only inside a call (`log(x)`, `poly(x, 2)`, `factor(cyl)`) has no class
# of its own in `dataClasses`; it is assumed numeric, the common case.
.rfleet_schema_terms <- function(model, terms, xlevels) {
  rhs <- delete.response(terms)
  vars <- all.vars(rhs)
  classes <- attr(terms, "dataClasses")
  if (length(vars) == 0 || is.null(classes)) return(NULL)
  if (is.null(xlevels)) xlevels <- list()
  forest_levels <- if (!is.null(model$forest$xlevels)) model$forest$xlevels else list()
  lapply(vars, function(v) {
    class <- if (v %in% names(classes)) classes[[v]] else "numeric"
    levels <- xlevels[[v]]
    if (is.null(levels) && is.character(forest_levels[[v]])) levels <- forest_levels[[v]]
    switch(class,
      factor = , ordered = list(name = v, type = class, levels = as.character(levels)),
      logical = , character = list(name = v, type = class, levels = NULL),
      list(name = v, type = "numeric", levels = NULL))
  })
}

.rfleet_schema_frame <- function(df) {
  cols <- Map(.rfleet_spec_of, names(df), df)
  if (any(vapply(cols, is.null, logical(1)))) NULL else unname(cols)
}

.rfleet_schema_randomforest <- function(model) {
  xlevels <- model$forest$xlevels
  ncat <- model$forest$ncat
  # The x/y interface leaves `xlevels` unnamed; `ncat` carries the column names.
  names <- if (!is.null(names(ncat))) names(ncat) else names(xlevels)
  if (is.null(xlevels) || is.null(ncat) || is.null(names)) return(NULL)
  Map(function(name, levels, n) {
    if (n > 1) list(name = name, type = "factor", levels = as.character(levels))
    else list(name = name, type = "numeric", levels = NULL)
  }, names, xlevels, ncat, USE.NAMES = FALSE)
}

.rfleet_schema_ranger <- function(model) {
  vars <- model$forest$independent.variable.names
  if (is.null(vars)) return(NULL)
  levels <- model$forest$covariate.levels
  lapply(vars, function(v) {
    l <- if (!is.null(levels)) levels[[v]] else NULL
    if (is.null(l)) list(name = v, type = "numeric", levels = NULL)
    else list(name = v, type = "factor", levels = as.character(l))
  })
}

.rfleet_schema_gbm <- function(model) {
  Map(function(name, type, levels) {
    if (type == 0) list(name = name, type = "numeric", levels = NULL)
    else list(name = name, type = "factor", levels = as.character(levels))
  }, model$var.names, model$var.type, model$var.levels, USE.NAMES = FALSE)
}

# The input schema of a model, as a list of list(name, type, levels), or NULL when it
# cannot be told. The response variable is never part of it.
.rfleet_schema <- function(model) {
  cols <- tryCatch({
    if (inherits(model, "train")) {
      if (!is.null(model$terms)) .rfleet_schema_terms(model, model$terms, model$xlevels)
      else if (is.data.frame(model$trainingData))
        .rfleet_schema_frame(model$trainingData[setdiff(names(model$trainingData), ".outcome")])
      else NULL
    } else if (!is.null(model$terms) && inherits(model$terms, "terms")) {
      xlevels <- if (!is.null(model$xlevels)) model$xlevels else attr(model, "xlevels")
      .rfleet_schema_terms(model, model$terms, xlevels)
    } else if (inherits(model, "randomForest")) .rfleet_schema_randomforest(model)
    else if (inherits(model, "ranger")) .rfleet_schema_ranger(model)
    else if (inherits(model, "gbm")) .rfleet_schema_gbm(model)
    else NULL
  }, error = function(e) NULL)
  if (length(cols) == 0) return(NULL)
  list(
    name = vapply(cols, `[[`, "", "name"),
    type = vapply(cols, `[[`, "", "type"),
    levels = lapply(cols, `[[`, "levels")
  )
}

# --- output conversion ---------------------------------------------------------------

.rfleet_describe <- function(x) {
  d <- dim(x)
  shape <- if (is.null(d)) paste("of length", length(x)) else paste("of dim", paste(d, collapse = " x "))
  paste0("a ", paste(class(x), collapse = "/"), " (", typeof(x), ") ", shape)
}

.rfleet_accepted <- paste(
  "expected a double, integer, logical or character vector, a factor, a matrix or a",
  "data.frame of such columns, with one value or row per input row")

# One output column: a plain vector of a wire type, or NULL when it is none.
.rfleet_column <- function(x) {
  if (is.factor(x)) return(x)
  if (inherits(x, c("Date", "POSIXt"))) return(enc2utf8(as.character(x)))
  if (!is.atomic(x) || !is.null(dim(x))) return(NULL)
  switch(typeof(x),
    double = , integer = , logical = x,
    character = enc2utf8(x),
    NULL)
}

# What the Rust side turns into a frame: a named list of columns, each a double,
# integer, logical or character vector or a factor, all `n` long. Anything else becomes
# an rfleet_error naming what came back.
.rfleet_columns <- function(x, n, label, what) {
  fail <- function(why) .rfleet_error(paste0(
    label, ": ", what, " returned ", .rfleet_describe(x), why, "; ", .rfleet_accepted))
  # A 3-d array with one slice (gbm's multinomial response) is a matrix.
  d <- dim(x)
  if (is.array(x) && length(d) == 3 && d[3] == 1) {
    x <- array(x, dim = d[1:2], dimnames = dimnames(x)[1:2])
  }
  if (is.data.frame(x)) {
    rows <- nrow(x)
    cols <- lapply(x, .rfleet_column)
    names(cols) <- names(x)
  } else if (is.matrix(x)) {
    rows <- nrow(x)
    if (!typeof(x) %in% c("double", "integer", "logical", "character")) return(fail(""))
    # Matrices hold numbers (probabilities, intervals, votes): integer ones become
    # double so that every column of a prediction matrix has the same wire type.
    if (is.integer(x)) storage.mode(x) <- "double"
    names <- colnames(x)
    if (is.null(names)) names <- if (ncol(x) == 1) ".pred" else paste0("V", seq_len(ncol(x)))
    cols <- lapply(seq_len(ncol(x)), function(j) .rfleet_column(as.vector(x[, j])))
    names(cols) <- names
  } else {
    column <- .rfleet_column(x)
    if (is.null(column)) return(fail(""))
    rows <- length(column)
    cols <- list(.pred = column)
  }
  if (any(vapply(cols, is.null, logical(1)))) return(fail(" with a column of an unsupported type"))
  if (rows != n) return(fail(paste0(" for ", n, " input row", if (n == 1) "" else "s")))
  cols
}

# The JSON an Azure ML entry script's function returned: a character scalar as is
# (jsonlite::toJSON's "json" class included), anything else through jsonlite.
.rfleet_json <- function(x, label) {
  if (is.character(x) && length(x) == 1 && !is.na(x)) return(enc2utf8(as.character(x)))
  tryCatch(
    enc2utf8(as.character(jsonlite::toJSON(x, auto_unbox = TRUE, digits = NA))),
    error = function(e) .rfleet_error(paste0(
      label, ": the function returned by init() returned ", .rfleet_describe(x),
      " that jsonlite cannot encode: ", conditionMessage(e), "; expected a JSON string"), e))
}

# An error answer: the message, and for an R condition its first class (`simpleError`,
# a package's own condition class), which the worker puts on the trace's exception event.
.rfleet_error <- function(message, condition = NULL) {
  structure(message, class = "rfleet_error",
            condition_class = if (inherits(condition, "condition")) class(condition)[1] else NULL)
}

# --- forest splitting ----------------------------------------------------------------
#
# A random forest's trees can be predicted in parts, on several hosts at once, and the
# parts combined exactly: regression parts answer the mean of their trees per row
# (combined as the tree-weighted mean), classification parts the number of their trees
# voting for each class per row (combined by summing). A part is predicted by R's own
# `predict` on a sub-forest: the model with only trees start..end in its forest, made
# once per range and kept by the Rust side.

# randomForest's per-tree fields: matrices with one column per tree, the 3-d `treemap`
# (nodes x 2 x trees) and the vector `ndbigtree`; everything else in `forest` describes
# the whole forest (ncat, xlevels, nrnodes, nclass, cutoff, pid, ...).
.rfleet_rf_tree_matrices <- c("nodestatus", "bestvar", "xbestsplit", "nodepred", "leftDaughter", "rightDaughter")

.rfleet_forest_randomforest <- function(model) {
  f <- model$forest
  if (is.null(f) || !model$type %in% c("regression", "classification")) return(NULL)
  n <- as.integer(f$ntree)
  if (length(n) != 1 || is.na(n) || n < 1) return(NULL)
  # Every per-tree field present has one slice per tree, or this is no forest we know.
  for (k in intersect(.rfleet_rf_tree_matrices, names(f))) {
    if (!is.matrix(f[[k]]) || ncol(f[[k]]) != n) return(NULL)
  }
  if (length(f$ndbigtree) != n) return(NULL)
  if (!is.null(f$treemap) && (length(dim(f$treemap)) != 3 || dim(f$treemap)[3] != n)) return(NULL)
  classification <- model$type == "classification"
  if (classification) {
    # randomForest's label is the class with the most votes / cutoff: with unequal
    # cutoffs that is not the plain majority the combined votes give.
    cutoff <- f$cutoff
    if (is.null(f$treemap) || length(cutoff) != length(model$classes) || any(cutoff != cutoff[1])) return(NULL)
  } else if (is.null(f$treemap) && (is.null(f$leftDaughter) || is.null(f$rightDaughter))) return(NULL)
  part <- function(start, end) {
    keep <- seq.int(start + 1L, end)
    g <- f
    for (k in intersect(.rfleet_rf_tree_matrices, names(g))) g[[k]] <- g[[k]][, keep, drop = FALSE]
    if (!is.null(g$treemap)) g$treemap <- g$treemap[, , keep, drop = FALSE]
    g$ndbigtree <- g$ndbigtree[keep]
    g$ntree <- length(keep)
    sub <- model
    sub$forest <- g
    sub$ntree <- length(keep)
    if (classification) {
      function(newdata) {
        v <- predict(sub, newdata = newdata, type = "vote", norm.votes = FALSE)
        v <- unclass(v)
        v[is.na(v)] <- 0
        storage.mode(v) <- "integer"
        list(votes = v)
      }
    } else {
      # A bias-corrected forest (corr.bias) answers a + b * mean: linear in the mean, so
      # its parts still combine as a tree-weighted mean.
      function(newdata) list(mean = as.double(predict(sub, newdata = newdata)))
    }
  }
  list(n_trees = n, classes = if (classification) as.character(model$classes) else NULL, part = part)
}

# ranger's per-tree fields are lists with one element per tree.
.rfleet_ranger_tree_lists <- c("child.nodeIDs", "split.varIDs", "split.values", "terminal.class.counts")

.rfleet_forest_ranger <- function(model) {
  f <- model$forest
  if (is.null(f) || !inherits(f, "ranger.forest")) return(NULL)
  # Probability and survival forests stay whole: what their trees answer is neither a
  # vote nor a number to average as these parts do.
  type <- f$treetype
  if (!identical(type, "Regression") && !identical(type, "Classification")) return(NULL)
  n <- as.integer(f$num.trees)
  if (length(n) != 1 || is.na(n) || n < 1) return(NULL)
  lists <- intersect(.rfleet_ranger_tree_lists, names(f))
  for (k in lists) if (!is.list(f[[k]]) || length(f[[k]]) != n) return(NULL)
  classification <- type == "Classification"
  # Trees vote with indices into `levels`; a classification of a numeric response has
  # none (its predictions are numbers), and stays whole.
  levels <- f$levels
  if (classification && is.null(levels)) return(NULL)
  part <- function(start, end) {
    keep <- seq.int(start + 1L, end)
    sub <- f
    for (k in lists) sub[[k]] <- f[[k]][keep]
    sub$num.trees <- length(keep)
    if (classification) {
      n_classes <- length(levels)
      function(newdata) {
        # One column per tree, each the index of the tree's class in `levels`.
        p <- predict(sub, data = newdata, predict.all = TRUE, num.threads = 1)$predictions
        p <- matrix(p, nrow = nrow(newdata))
        v <- matrix(0L, nrow(p), n_classes)
        for (j in seq_len(n_classes)) v[, j] <- as.integer(rowSums(p == j, na.rm = TRUE))
        list(votes = v)
      }
    } else {
      function(newdata) list(mean = as.double(predict(sub, data = newdata, num.threads = 1)$predictions))
    }
  }
  list(n_trees = n, classes = if (classification) as.character(levels) else NULL, part = part)
}

# What forest splitting needs of a model called by `predict`: NULL when its trees cannot
# be split, else list(n_trees, classes (NULL for regression), part = function(start,
# end)) whose result, function(newdata), answers list(mean = <double per row>) or
# list(votes = <integer matrix, a row per input row, a column per class>).
.rfleet_forest <- function(model) {
  tryCatch({
    if (inherits(model, "randomForest")) .rfleet_forest_randomforest(model)
    else if (inherits(model, "ranger")) .rfleet_forest_ranger(model)
    else NULL
  }, error = function(e) NULL)
}

# The scorer of trees start..end (0-based, end exclusive) of a model's forest:
# function(newdata, n) answering list(mean) or list(votes) for n rows, or an
# rfleet_error. Preparing the sub-forest may fail too; that is an rfleet_error as well.
.rfleet_part_scorer <- function(label, forest, start, end) {
  trees <- paste0("trees ", start, "..", end)
  tryCatch({
    part <- forest$part(as.integer(start), as.integer(end))
    function(newdata, n) {
      tryCatch({
        out <- part(newdata)
        got <- if (!is.null(out$mean)) length(out$mean) else nrow(out$votes)
        if (!identical(as.integer(got), as.integer(n))) {
          stop("the part answered ", got, " rows for ", n, " input rows")
        }
        out
      }, error = function(e) .rfleet_error(paste0(
        label, ": predict failed (", trees, "): ", conditionMessage(e)), e))
    }
  }, error = function(e) .rfleet_error(paste0(
    label, ": preparing ", trees, " failed: ", conditionMessage(e)), e))
}

# --- native forests ------------------------------------------------------------------
#
# `.rfleet_native(model)` extracts a randomForest, ranger or gbm model's trees for the
# native engine as plain vectors, which the Rust side (src/native.rs) reads into a
# `NativeForest`. Per tree: `var` (0-based input, -1 at leaves), `split` (the threshold;
# at a categorical split of randomForest and ranger the packed level bits as the package
# stores them, unpacked on the Rust side, which knows every input's levels; at gbm's the
# index into the tree's `sets`), `left`, `right` and gbm's `missing` (0-based nodes),
# `value` (the leaf's value or class), ranger probability leaves' `distribution`, and
# gbm's `sets` (`c.splits` as -1 left, 1 right, 0 missing). Inputs are in the order the
# trees count them, with the model's levels where the model stores them (NULL where it
# does not: the levels a request's frame is conformed to are then R's codes).
#
# A model the engine cannot reproduce answers an `rfleet_unsupported` string saying
# which class or option; an R error an `rfleet_error`.

.rfleet_unsupported <- function(reason) structure(reason, class = "rfleet_unsupported")

.rfleet_native_input <- function(name, levels, categorical, code_base) {
  list(name = name, levels = if (is.character(levels)) levels else NULL,
       categorical = categorical, code_base = as.integer(code_base))
}

.rfleet_native_randomforest <- function(model) {
  f <- model$forest
  if (is.null(f)) return(.rfleet_unsupported("a randomForest without its forest (keep.forest = FALSE)"))
  if (!model$type %in% c("regression", "classification")) {
    return(.rfleet_unsupported(paste0("a randomForest of type '", model$type, "'")))
  }
  vname <- if (is.null(dim(model$importance))) names(model$importance) else rownames(model$importance)
  if (!is.null(model$terms) && !all(vname %in% all.vars(delete.response(model$terms)))) {
    return(.rfleet_unsupported("a randomForest formula with terms that are not plain variables"))
  }
  ncat <- as.integer(f$ncat)
  inputs <- Map(function(name, n, levels) .rfleet_native_input(name, if (n > 1) levels else NULL, n > 1, 1L),
                vname, ncat, f$xlevels, USE.NAMES = FALSE)
  trees <- lapply(seq_len(f$ntree), function(t) {
    n <- f$ndbigtree[t]
    nodes <- seq_len(n)
    leaf <- f$nodestatus[nodes, t] == -1L
    # Classification forests (and old regression ones) keep their children in `treemap`.
    left <- if (!is.null(f$treemap)) f$treemap[nodes, 1, t] else f$leftDaughter[nodes, t]
    right <- if (!is.null(f$treemap)) f$treemap[nodes, 2, t] else f$rightDaughter[nodes, t]
    list(var = ifelse(leaf, -1L, as.integer(f$bestvar[nodes, t]) - 1L),
         split = ifelse(leaf, 0, as.double(f$xbestsplit[nodes, t])),
         left = ifelse(leaf, 0L, as.integer(left) - 1L),
         right = ifelse(leaf, 0L, as.integer(right) - 1L),
         value = ifelse(leaf, as.double(f$nodepred[nodes, t]), 0))
  })
  output <- if (model$type == "classification") {
    list(kind = "votes", classes = as.character(model$classes), cutoff = as.double(f$cutoff))
  } else {
    list(kind = "mean", bias = if (is.null(model$coefs)) NULL else as.double(model$coefs))
  }
  list(algorithm = "random_forest", inputs = inputs, trees = trees, output = output)
}

.rfleet_native_ranger <- function(model) {
  f <- model$forest
  if (is.null(f)) return(.rfleet_unsupported("a ranger model without its forest (write.forest = FALSE)"))
  type <- f$treetype
  output <- switch(type,
    "Regression" = list(kind = "mean", bias = NULL),
    "Classification" = if (is.null(f$levels)) NULL else list(kind = "majority", classes = as.character(f$levels)),
    "Probability estimation" = list(kind = "distribution",
                                    classes = as.character(f$levels[sort(f$class.values)])),
    NULL)
  if (is.null(output)) {
    what <- switch(type, "Survival" = "ranger survival forests",
                   "Classification" = "a ranger classification of a numeric response",
                   paste0("ranger forests of type '", type, "'"))
    return(.rfleet_unsupported(what))
  }
  vars <- f$independent.variable.names
  levels <- if (is.null(f$covariate.levels)) list() else f$covariate.levels
  inputs <- Map(function(name, ordered) .rfleet_native_input(name, levels[[name]], !ordered, 1L),
                vars, f$is.ordered, USE.NAMES = FALSE)
  # Probability leaves hold their fractions in `class.values` order; predict.ranger
  # answers the columns sorted by class value.
  probability <- type == "Probability estimation"
  reorder <- if (probability) order(f$class.values) else NULL
  trees <- lapply(seq_len(f$num.trees), function(t) {
    left <- as.integer(f$child.nodeIDs[[t]][[1]])
    right <- as.integer(f$child.nodeIDs[[t]][[2]])
    leaf <- left == 0L & right == 0L
    split <- as.double(f$split.values[[t]])
    tree <- list(var = ifelse(leaf, -1L, as.integer(f$split.varIDs[[t]])),
                 split = ifelse(leaf, 0, split), left = left, right = right,
                 value = ifelse(leaf, split, 0))
    if (probability) {
      tree$distribution <- lapply(f$terminal.class.counts[[t]], function(p) if (length(p)) as.double(p[reorder]) else double())
    }
    tree
  })
  list(algorithm = "ranger", inputs = inputs, trees = trees, output = output)
}

.rfleet_native_gbm <- function(model) {
  distribution <- model$distribution$name
  if (!distribution %in% c("gaussian", "bernoulli", "poisson")) {
    return(.rfleet_unsupported(paste0("gbm distribution ", distribution)))
  }
  if (!is.null(model$num.classes) && model$num.classes != 1) {
    return(.rfleet_unsupported("a gbm model of more than one class"))
  }
  vars <- model$var.names
  if (!is.null(model$Terms) && !all(vars %in% all.vars(model$Terms))) {
    return(.rfleet_unsupported("a gbm formula with terms that are not plain variables"))
  }
  inputs <- Map(function(name, type, levels) .rfleet_native_input(name, levels, type > 0, 0L),
                vars, model$var.type, model$var.levels, USE.NAMES = FALSE)
  trees <- lapply(model$trees[seq_len(model$n.trees)], function(tree) {
    var <- as.integer(tree[[1]])
    code <- as.double(tree[[2]])
    leaf <- var == -1L
    categorical <- !leaf & model$var.type[pmax(var, 0L) + 1L] > 0
    # The tree's own sets: the c.splits its categorical nodes use, numbered from 0.
    used <- unique(code[categorical])
    split <- code
    split[categorical] <- match(code[categorical], used) - 1
    # gbm's leaves have -1 children; 0 as in the other packages' leaves.
    child <- function(nodes) ifelse(leaf, 0L, as.integer(nodes))
    list(var = var, split = ifelse(leaf, 0, split), left = child(tree[[3]]),
         right = child(tree[[4]]), missing = child(tree[[5]]),
         value = ifelse(leaf, code, 0),
         sets = lapply(used, function(k) {
           s <- as.integer(model$c.splits[[k + 1]])
           ifelse(s == -1L, -1L, ifelse(s == 1L, 1L, 0L))
         }))
  })
  list(algorithm = "gbm", inputs = inputs, trees = trees,
       output = list(kind = "boosted", init = as.double(model$initF), distribution = distribution))
}

# The native forest of a model called by `predict` (see above), with its package's
# version.
.rfleet_native <- function(model) {
  tryCatch({
    package <- if (inherits(model, "randomForest")) "randomForest"
      else if (inherits(model, "ranger")) "ranger"
      else if (inherits(model, "gbm")) "gbm"
      else NULL
    if (is.null(package)) {
      return(.rfleet_unsupported(paste0("a model of class ", paste(class(model), collapse = "/"),
                                        " (the engine knows randomForest, ranger and gbm)")))
    }
    forest <- switch(package, randomForest = .rfleet_native_randomforest(model),
                     ranger = .rfleet_native_ranger(model), gbm = .rfleet_native_gbm(model))
    if (inherits(forest, "rfleet_unsupported")) return(forest)
    forest$package_version <- as.character(utils::packageVersion(package))
    forest
  }, error = function(e) .rfleet_error(paste0("extracting the forest failed in R: ", conditionMessage(e)), e))
}

# --- loading -------------------------------------------------------------------------

.rfleet_default_type <- function(model) {
  # Binomial glms answer probabilities, not log-odds; gbm likewise answers on the
  # response scale rather than its link scale.
  if (inherits(model, "glm") || inherits(model, "gbm")) "response" else NULL
}

# How `predict` is called for this model: a function(newdata, type). `type` is NULL when
# neither the request nor model.toml gives one, and then omitted from the call.
.rfleet_predict_call <- function(model) {
  force(model)
  if (inherits(model, "ranger")) {
    # ranger names its argument `data`, answers a list, and by default spreads one call
    # over every core: one R host per core already does that, so it gets one thread.
    function(newdata, type) {
      p <- if (is.null(type)) predict(model, data = newdata, num.threads = 1)
           else predict(model, data = newdata, type = type, num.threads = 1)
      if (inherits(p, "ranger.prediction")) p$predictions else p
    }
  } else if (inherits(model, "gbm")) {
    # gbm refuses to guess how many trees to use.
    n_trees <- model$n.trees
    function(newdata, type) {
      if (is.null(type)) predict(model, newdata = newdata, n.trees = n_trees)
      else predict(model, newdata = newdata, n.trees = n_trees, type = type)
    }
  } else {
    function(newdata, type) {
      if (is.null(type)) predict(model, newdata = newdata)
      else predict(model, newdata = newdata, type = type)
    }
  }
}

# The per-request entry points for one model, two R calls so that the Rust side can time
# the model's own work apart from converting its answer: `compute`, function(newdata,
# type) for frames or function(data) for Azure ML scripts, answers whatever the model
# answered; `output`, function(x, n) for frames or function(x) for scripts, turns that into
# what the Rust side reads (a list of columns, or a JSON string). Neither signals an error:
# R errors come back as an `rfleet_error` string that names the model and carries R's
# message and condition class.
.rfleet_scorer <- function(label, kind, model, script_fn, dir) {
  force(label); force(model); force(script_fn); force(dir)
  if (kind == "azure_ml") {
    failed <- function(e) .rfleet_error(paste0(
      label, ": the function returned by init() failed: ", conditionMessage(e)), e)
    return(list(
      compute = function(data) {
        # Entry scripts may read AZUREML_MODEL_DIR at request time too, and one host
        # serves several models, so it points at this model's directory for the call.
        Sys.setenv(AZUREML_MODEL_DIR = dir)
        tryCatch(script_fn(data), error = failed)
      },
      output = function(x) tryCatch(.rfleet_json(x, label), error = failed)))
  }
  if (kind == "predict_fn") {
    what <- "predict_fn"
    # Named as in score.R, so that R's warnings read "Warning in predict_fn(...)".
    predict_fn <- script_fn
    # A predict_fn that declares `type` gets the request's (or model.toml's) type.
    pass_type <- "type" %in% names(formals(predict_fn))
    call <- if (pass_type) function(newdata, type) predict_fn(model, newdata, type = type)
            else function(newdata, type) predict_fn(model, newdata)
  } else {
    what <- "predict"
    call <- .rfleet_predict_call(model)
  }
  failed <- function(e) .rfleet_error(paste0(label, ": ", what, " failed: ", conditionMessage(e)), e)
  list(
    compute = function(newdata, type) tryCatch(call(newdata, type), error = failed),
    output = function(x, n) tryCatch(.rfleet_columns(x, n, label, what), error = failed))
}

# Loads one model package. Answers list(kind, scorer (compute and output), r_class,
# schema, predict_type, forest, model (the model for `.rfleet_native()`, NULL unless
# called by `predict`)), or an rfleet_error "<label>: loading failed in R: <step>: <R's message>".
# `forest` is `.rfleet_forest()`'s answer for a model called by `predict`, else NULL.
#
# Loading registers nothing anywhere: the package's environment (score.R's definitions)
# and the model live only in the closures of the answer, which the Rust side keeps. A load
# that fails therefore leaves nothing behind for the next one to trip on (bar what a
# score.R does to the global state itself: packages it attaches, `<<-`), and two versions
# of one name never share an environment. AZUREML_MODEL_DIR is restored either way.
.rfleet_load <- function(label, dir, predict_type) {
  step <- "reading the package"
  # AZUREML_MODEL_DIR points at the package while score.R is sourced and init() runs.
  old_dir <- Sys.getenv("AZUREML_MODEL_DIR", unset = NA)
  on.exit(if (is.na(old_dir)) Sys.unsetenv("AZUREML_MODEL_DIR") else Sys.setenv(AZUREML_MODEL_DIR = old_dir))
  tryCatch({
    dir <- normalizePath(dir, mustWork = TRUE)
    rds <- file.path(dir, "model.rds")
    script <- file.path(dir, "score.R")
    Sys.setenv(AZUREML_MODEL_DIR = dir)
    env <- new.env(parent = globalenv())
    if (file.exists(script)) {
      step <- "sourcing score.R"
      source(script, local = env, keep.source = FALSE)
    }
    defines <- function(f) exists(f, envir = env, inherits = FALSE) && is.function(get(f, envir = env))
    model <- NULL
    if (defines("init")) {
      r_class <- character()
      if (file.exists(rds)) {
        # Entry scripts written for Azure ML often call predict() without attaching the
        # model's package; reading the model once here loads the namespace its predict
        # method lives in. The copy is dropped before init() reads its own, so a large
        # model is never held twice.
        step <- "reading model.rds"
        model <- readRDS(rds)
        .rfleet_attach_methods(model)
        r_class <- class(model)
        model <- NULL
        invisible(gc(verbose = FALSE))
      }
      step <- "calling init()"
      fn <- env$init()
      if (!is.function(fn)) stop("init() returned ", .rfleet_describe(fn), ", expected a function(data)")
      requireNamespace("jsonlite", quietly = TRUE)
      kind <- "azure_ml"
      schema <- NULL
      forest <- NULL
    } else {
      step <- "reading model.rds"
      if (!file.exists(rds)) stop("there is no model.rds in ", dir, " (and no score.R with init())")
      model <- readRDS(rds)
      .rfleet_attach_methods(model)
      kind <- if (defines("predict_fn")) "predict_fn" else "predict"
      fn <- if (kind == "predict_fn") env$predict_fn else NULL
      step <- "inferring the input schema"
      schema <- .rfleet_schema(model)
      r_class <- class(model)
      forest <- if (kind == "predict") .rfleet_forest(model) else NULL
    }
    if (is.null(predict_type) && kind == "predict") predict_type <- .rfleet_default_type(model)
    list(
      kind = kind,
      scorer = .rfleet_scorer(label, kind, model, fn, dir),
      r_class = r_class,
      schema = schema,
      predict_type = predict_type,
      forest = forest,
      model = if (kind == "predict") model else NULL
    )
  }, error = function(e) .rfleet_error(paste0(label, ": loading failed in R: ", step, ": ", conditionMessage(e))))
}
