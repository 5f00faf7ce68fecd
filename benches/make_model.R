# Builds the benchmark model and request rows: a 500-tree randomForest regression.
#
# Usage: Rscript benches/make_model.R <outdir>
# Writes <outdir>/rf500/model.rds (a model package for `rfleet serve --models <outdir>`)
# and <outdir>/rows.jsonl: one single-row request body per line, as jsonlite::toJSON
# writes a one-row data.frame, e.g. [{"x1":0.52,"x2":-1.3,"x3":7.1,"x4":0.04,"region":"north"}].
# Everything is seeded, so two runs produce the same model and the same rows.

suppressPackageStartupMessages({
  library(randomForest)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) {
  stop("usage: Rscript make_model.R <outdir>", call. = FALSE)
}
outdir <- args[[1]]
n_train <- 1000L
n_rows <- 1000L
n_trees <- 500L

# Four numeric predictors and one unordered factor: the factor makes the service build a
# factor column with the training levels, which is the common case for real models.
regions <- c("north", "south", "east", "west", "centre")
synthetic <- function(n) {
  df <- data.frame(
    x1 = runif(n),
    x2 = rnorm(n),
    x3 = rexp(n, rate = 0.2),
    x4 = rnorm(n, mean = 0, sd = 0.1),
    region = factor(sample(regions, n, replace = TRUE), levels = regions)
  )
  region_effect <- c(north = 1, south = -1, east = 0.5, west = -0.5, centre = 0)
  df$y <- 3 * df$x1 + sin(2 * df$x2) + 0.2 * df$x3 + 5 * df$x4 +
    unname(region_effect[as.character(df$region)]) + rnorm(n, sd = 0.3)
  df
}

set.seed(20240611)
train <- synthetic(n_train)
# The formula interface is what most users write; it also makes `predict` go through
# model.frame, as it will for their models.
model <- randomForest(y ~ x1 + x2 + x3 + x4 + region, data = train, ntree = n_trees)

package_dir <- file.path(outdir, "rf500")
dir.create(package_dir, recursive = TRUE, showWarnings = FALSE)
saveRDS(model, file.path(package_dir, "model.rds"))

# Request rows come from fresh draws, not the training set; predictors only.
set.seed(20240612)
rows <- synthetic(n_rows)
rows$y <- NULL
# digits = NA keeps full double precision; rownames = FALSE keeps jsonlite from adding a
# "_row" field for non-default row names such as those of rows[i, ].
lines <- vapply(seq_len(n_rows), function(i) {
  as.character(toJSON(rows[i, , drop = FALSE], digits = NA, rownames = FALSE))
}, character(1))
writeLines(lines, file.path(outdir, "rows.jsonl"))

cat(sprintf(
  "make_model: %s (randomForest, %d trees, %d training rows, %.1f MB) and %d request rows in %s\n",
  file.path(package_dir, "model.rds"), model$ntree, n_train,
  file.size(file.path(package_dir, "model.rds")) / 1e6, n_rows, file.path(outdir, "rows.jsonl")
))
