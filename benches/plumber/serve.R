# Runs benches/plumber/plumber.R as one plumber process on 127.0.0.1:<port>, no docs UI.
# Usage: BENCH_MODEL_RDS=.../model.rds Rscript benches/plumber/serve.R <port>
args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript serve.R <port>", call. = FALSE)
file <- file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(), value = TRUE)[[1]])), "plumber.R")
api <- plumber::pr(file)
api <- plumber::pr_set_docs(api, FALSE)
plumber::pr_run(api, host = "127.0.0.1", port = as.integer(args[[1]]), quiet = TRUE)
