# The R reference for one large request: predict() on all of its rows in one call.
#
# Usage: Rscript benches/r_big.R --model DIR/rf500/model.rds --body big.json \
#          [--runs 5] [--json out.json]
#
# The body is what the services get (a JSON array of row objects). It is parsed and its
# factor columns get the model's levels once, outside the timed region (rfleet does that
# work in Rust, before R sees the rows); then predict(model, newdata = rows) is timed
# --runs times after one untimed call, and the median (nearest rank) is reported, as
# rfleet-load reports p50 over the same number of requests.

suppressPackageStartupMessages({
  library(jsonlite)
  library(randomForest)
})

argv <- commandArgs(trailingOnly = TRUE)
opts <- list(model = NULL, body = NULL, runs = "5", json = NULL)
if (length(argv) %% 2 != 0) stop("arguments come in pairs: --name value", call. = FALSE)
for (i in seq(1, length(argv), by = 2)) {
  name <- sub("^--", "", argv[[i]])
  if (!startsWith(argv[[i]], "--") || !(name %in% names(opts))) stop("unknown argument ", argv[[i]], call. = FALSE)
  opts[[name]] <- argv[[i + 1]]
}
if (is.null(opts$model) || is.null(opts$body)) {
  stop("usage: Rscript r_big.R --model model.rds --body big.json [--runs N] [--json out.json]", call. = FALSE)
}
n_runs <- as.integer(opts$runs)
stopifnot(n_runs >= 1)

model <- readRDS(opts$model)
rows <- fromJSON(paste(readLines(opts$body, warn = FALSE), collapse = "\n"))
for (name in intersect(names(model$forest$xlevels), names(rows))) {
  levels <- model$forest$xlevels[[name]]
  if (is.character(levels)) rows[[name]] <- factor(rows[[name]], levels = levels)
}

invisible(predict(model, newdata = rows))
times_ms <- vapply(seq_len(n_runs), function(i) {
  t0 <- Sys.time()
  predict(model, newdata = rows)
  as.double(Sys.time() - t0, units = "secs") * 1000
}, numeric(1))
sorted <- sort(times_ms)
summary <- list(
  system = "R predict, one call",
  rows = nrow(rows),
  requests = n_runs,
  p50_ms = round(unname(quantile(sorted, 0.5, type = 1)), 3),
  min_ms = round(min(sorted), 3),
  max_ms = round(max(sorted), 3)
)
cat(sprintf("r_big: %d rows, %d runs, median %.1f ms (min %.1f, max %.1f)\n",
            summary$rows, n_runs, summary$p50_ms, summary$min_ms, summary$max_ms))
if (!is.null(opts$json)) writeLines(toJSON(summary, auto_unbox = TRUE, digits = NA, pretty = TRUE), opts$json)
