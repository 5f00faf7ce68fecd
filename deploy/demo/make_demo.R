# Makes rfleet's demo model package: a randomForest regression of mtcars' mpg.
# Usage: Rscript deploy/demo/make_demo.R <models-dir>
args <- commandArgs(trailingOnly = TRUE)
dir <- file.path(if (length(args)) args[[1]] else "models", "mtcars")
dir.create(dir, recursive = TRUE, showWarnings = FALSE)
suppressPackageStartupMessages(library(randomForest))
set.seed(42)
cars <- mtcars
cars$gear <- factor(cars$gear)
model <- randomForest(mpg ~ wt + hp + cyl + gear, data = cars, ntree = 500)
saveRDS(model, file.path(dir, "model.rds"))
writeLines(c(
  'name = "mtcars"',
  'version = "1"',
  '# Inputs are inferred from the model; declare them here to override:',
  '# input = [{ name = "wt", type = "numeric" }, { name = "gear", type = "factor", levels = ["3", "4", "5"] }]'
), file.path(dir, "model.toml"))
cat("demo model written to", dir, "\n")
