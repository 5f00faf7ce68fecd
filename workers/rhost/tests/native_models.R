# Model packages for tests/native.rs: small randomForest, ranger and gbm models covering
# what the native engine reproduces (and a few it must refuse), one package directory
# each under the directory given as the first argument, with model.rds, model.toml, and
# model-resaved.rds (the same model saved uncompressed: another digest, the same forest).
#
#   Rscript native_models.R <out dir>

suppressPackageStartupMessages({
  library(randomForest)
  library(ranger)
  library(gbm)
})
args <- commandArgs(trailingOnly = TRUE)
out <- args[[1]]

set.seed(20261202)
n <- 300
g_levels <- c("north", "south", "east", "west", "up", "down")
d <- data.frame(
  x1 = rnorm(n),
  x2 = runif(n, -5, 5),
  g = factor(sample(g_levels, n, TRUE), levels = g_levels),
  o = factor(sample(c("lo", "mid", "hi"), n, TRUE), levels = c("lo", "mid", "hi"), ordered = TRUE)
)
effect <- c(north = 2, south = -1, east = 0.5, west = 3, up = -2, down = 1)
d$y <- d$x1 + 0.3 * d$x2 + effect[as.character(d$g)] + as.numeric(d$o) + rnorm(n, sd = 0.5)
d$cl <- factor(cut(d$y, c(-Inf, 0.5, 2.5, Inf), labels = c("low", "mid", "high")))
d$bin <- as.integer(d$y > 1.5)
d$count <- rpois(n, exp(0.3 * d$x1 + 0.2 * as.numeric(d$g) / 2))
d$time <- rexp(n, exp(0.2 * d$x1))
d$status <- rbinom(n, 1, 0.7)
# gbm learns missing branches from missing values in training.
d_na <- d
d_na$x1[sample(n, 30)] <- NA
d_na$g[sample(n, 20)] <- NA

# `input` (a data.frame's columns) declares the package's schema in model.toml; `engine`
# its engine.
package <- function(name, model, input = NULL, engine = NULL, score = NULL) {
  dir <- file.path(out, name)
  dir.create(dir, recursive = TRUE, showWarnings = FALSE)
  saveRDS(model, file.path(dir, "model.rds"))
  saveRDS(model, file.path(dir, "model-resaved.rds"), compress = FALSE)
  toml <- paste0('name = "', name, '"\n')
  if (!is.null(engine)) toml <- paste0(toml, 'engine = "', engine, '"\n')
  for (col in names(input)) {
    x <- input[[col]]
    type <- if (is.ordered(x)) "ordered" else if (is.factor(x)) "factor" else "numeric"
    toml <- paste0(toml, '\n[[input]]\nname = "', col, '"\ntype = "', type, '"\n')
    if (is.factor(x)) {
      toml <- paste0(toml, "levels = [", paste0('"', levels(x), '"', collapse = ", "), "]\n")
    }
  }
  writeLines(toml, file.path(dir, "model.toml"))
  if (!is.null(score)) writeLines(score, file.path(dir, "score.R"))
}

package("rf_reg", randomForest(y ~ x1 + x2 + g, d, ntree = 120))
package("rf_bias", randomForest(y ~ x1 + x2 + g, d, ntree = 80, corr.bias = TRUE))
package("rf_xy", randomForest(d[c("x1", "x2", "g")], d$y, ntree = 60))
package("rf_class", randomForest(cl ~ x1 + x2 + g, d, ntree = 100))
package("rf_cutoff", randomForest(cl ~ x1 + x2 + g, d, ntree = 90, cutoff = c(0.5, 0.3, 0.2)))
# randomForest keeps no levels of an ordered factor (it splits on its codes): the declared
# schema's levels are R's codes.
package("rf_ordered", randomForest(y ~ x1 + g + o, d, ntree = 50), input = d[c("x1", "g", "o")])
package("rf_ties", randomForest(factor(bin) ~ x1 + g, d, ntree = 10, maxnodes = 4))

package("ranger_order", ranger(y ~ x1 + x2 + g + o, d, num.trees = 100, respect.unordered.factors = "order"))
package("ranger_partition",
        ranger(y ~ x1 + x2 + g + o, d, num.trees = 100, respect.unordered.factors = "partition"),
        input = d[c("x1", "x2", "g", "o")])
package("ranger_ignore", ranger(y ~ x1 + x2 + g + o, d, num.trees = 80), input = d[c("x1", "x2", "g", "o")])
package("ranger_class",
        ranger(cl ~ x1 + x2 + g, d, num.trees = 60, respect.unordered.factors = "partition"),
        input = d[c("x1", "x2", "g")])
package("ranger_prob", ranger(cl ~ x1 + x2 + g, d, num.trees = 70, probability = TRUE, respect.unordered.factors = "order"))

package("gbm_gaussian", gbm(y ~ x1 + x2 + g, data = d_na, distribution = "gaussian", n.trees = 150,
                            interaction.depth = 3, shrinkage = 0.05, bag.fraction = 0.8))
package("gbm_bernoulli", gbm(bin ~ x1 + x2 + g, data = d_na, distribution = "bernoulli", n.trees = 120,
                             interaction.depth = 2, shrinkage = 0.1))
package("gbm_ordered", gbm(y ~ x1 + o + g, data = d_na, distribution = "gaussian", n.trees = 60,
                           interaction.depth = 2), input = d[c("x1", "o", "g")])
package("gbm_poisson", gbm(count ~ x1 + x2 + g, data = d_na, distribution = "poisson", n.trees = 100,
                           interaction.depth = 2, shrinkage = 0.05))

# Left to R: what the engine does not reproduce, and a package that asks for R.
package("gbm_multinomial", suppressWarnings(gbm(cl ~ x1 + x2, data = d, distribution = "multinomial", n.trees = 20)))
package("ranger_survival", ranger(survival::Surv(time, status) ~ x1 + x2, d, num.trees = 20))
package("rf_no_forest", randomForest(y ~ x1 + x2, d, ntree = 20, keep.forest = FALSE))
package("rf_predict_fn", randomForest(y ~ x1 + x2, d, ntree = 20),
        score = "predict_fn <- function(model, newdata) predict(model, newdata)")
package("rf_engine_r", randomForest(y ~ x1 + x2, d, ntree = 20), engine = "r")
