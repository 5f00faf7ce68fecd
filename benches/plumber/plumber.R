# The plumber baseline for benches/suite.sh: the same model, the same request bodies.
#
# POST /score takes the body rfleet's POST /score takes for this model, an array of row
# objects as jsonlite::toJSON writes a data.frame ([{"x1":0.99,...,"region":"south"}]),
# and answers the predictions as a JSON array ([4.2836...]), as rfleet does. The model is
# read once, when the API is built, from the path in BENCH_MODEL_RDS.
#
# Run it alone:   Rscript benches/plumber/serve.R <port>        (BENCH_MODEL_RDS set)
# Or under valve: valve -f benches/plumber/plumber.R ...         (valve runs plumb()$run())

suppressPackageStartupMessages({
  library(jsonlite)
  library(randomForest)
})

model_path <- Sys.getenv("BENCH_MODEL_RDS")
if (!nzchar(model_path) || !file.exists(model_path)) {
  stop("BENCH_MODEL_RDS must name the benchmark's model.rds (got '", model_path, "')", call. = FALSE)
}
model <- readRDS(model_path)
# Factor predictors get the training levels (as rfleet does from the model's xlevels);
# otherwise predict() rejects a character column.
xlevels <- Filter(is.character, model$forest$xlevels)

to_frame <- function(body) {
  rows <- fromJSON(body)
  if (!is.data.frame(rows) || nrow(rows) == 0) stop("the body must be a non-empty array of row objects")
  for (name in intersect(names(xlevels), names(rows))) {
    rows[[name]] <- factor(rows[[name]], levels = xlevels[[name]])
  }
  rows
}

#* Predictions for the posted rows.
#* @post /score
#* @serializer json list(digits = NA)
function(req, res) {
  rows <- tryCatch(to_frame(req$postBody), error = function(e) e)
  if (inherits(rows, "error")) {
    res$status <- 400
    return(list(message = conditionMessage(rows)))
  }
  unname(as.numeric(predict(model, newdata = rows)))
}

#* Liveness, for the benchmark's readiness check.
#* @get /ready
#* @serializer json
function() {
  list(ready = TRUE)
}
